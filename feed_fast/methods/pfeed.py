"""Parallel FEED: K frozen teachers, K translators fed the student's last feature map,
CE + beta * sum_k FEED_k (the FEED term is `feed_fast.FEEDLoss`), optionally plus Hinton KD."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from ..ops.loss import FEEDLoss
from .base import Distiller, Method
from .losses import hinton_kd


class PFEED(Distiller):
    needs_teacher_features = True
    needs_student_feature = True

    def __init__(self, student, teacher_channels: Sequence[int], *, beta: float = 500.0,
                 translator: dict | None = None, backend: str = "auto", kd_weight: float = 0.0,
                 kd_temperature: float = 4.0) -> None:
        super().__init__(student)
        self.feed = FEEDLoss(student.feature_channels, list(teacher_channels), beta=beta, backend=backend,
                             **(translator or {}))
        self.kd_weight, self.kd_temperature = kd_weight, kd_temperature
        self.needs_teacher_logits = kd_weight > 0

    def student_side(self, student_feature):
        """The translator bodies need only the student: they run while the teachers' streams still work."""
        return {"head_inputs": self.feed.translators.head_inputs(student_feature)}

    def losses(self, student_feature, logits, labels, teachers, head_inputs=None):
        feed = self.feed(student_feature, teachers.features, head_inputs=head_inputs)
        losses = {"ce": self.cross_entropy(logits, labels)}
        # one entry per teacher, so metrics.jsonl shows each FEED term (views of one vector: no kernel each)
        for k, term in enumerate(feed.per_teacher.unbind(0)):
            losses[f"feed_{k}"] = term
        if self.needs_teacher_logits:
            losses["kd"] = self.kd_weight * hinton_kd(logits, teachers.logits, self.kd_temperature)
        return losses


def pfeed_options(cfg) -> dict:
    """PFEED's keyword arguments from the config's `method` section (sFEED's generations use them too)."""
    return {
        "beta": cfg.beta,
        "translator": asdict(cfg.translator),
        "backend": cfg.backend,
        "kd_weight": cfg.kd.weight if cfg.kd.enabled else 0.0,
        "kd_temperature": cfg.kd.temperature,
    }


class PFEEDMethod(Method):
    requires_teachers = True

    def build(self, student, teacher_channels):
        return PFEED(student, teacher_channels, **pfeed_options(self.cfg))

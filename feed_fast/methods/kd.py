"""Hinton KD against the mean of the teachers' softened logits, plus cross-entropy."""
from __future__ import annotations

from .base import Distiller, Method
from .losses import hinton_kd


class KD(Distiller):
    needs_teacher_logits = True

    def __init__(self, student, *, temperature: float = 4.0, weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__(student)
        self.temperature, self.weight, self.ce_weight = temperature, weight, ce_weight

    def losses(self, student_feature, logits, labels, teachers):
        return {
            "ce": self.ce_weight * self.cross_entropy(logits, labels),
            "kd": self.weight * hinton_kd(logits, teachers.logits, self.temperature),
        }


class KDMethod(Method):
    requires_teachers = True

    def build(self, student, teacher_channels):
        return KD(student, temperature=self.cfg.kd.temperature, weight=self.cfg.kd.weight)

"""What every distillation method shares, in two small bases (mdistiller style):

- `Method`, the recipe: how many generations it trains, which teachers each generation learns from, whether
  it needs teachers at all, and the `Distiller` of one generation, built from the config's `method` section.
- `Distiller`, the step: an nn.Module owning the student and the method's own trainable parts (translators),
  whose `forward` returns the logits and a dict of named losses. The trainer sums the dict and never asks
  which method it runs. Teachers are not submodules: they are frozen, run by the engine (one CUDA stream each)
  and arrive as `PendingTeachers`.

Each method is one file holding its Method and its Distiller; `methods/__init__.py` registers it by name."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from ..runtime.timing import LOSS, STUDENT_FORWARD, SectionTimer, no_timer
from .losses import cross_entropy


@dataclass
class TeacherOutputs:
    features: list[Tensor] | None  # one per teacher when the method asks for features
    logits: list[Tensor] | None  # one per teacher when the method asks for logits


class PendingTeachers(Protocol):
    def wait(self) -> TeacherOutputs:
        """Block the current stream until every teacher's outputs are ready."""


class Distiller(nn.Module):
    needs_teacher_features = False
    needs_teacher_logits = False
    needs_student_feature = False
    # `train.label_smoothing`, set by the engine after `Method.build` (TrainStep.from_config); every method's CE
    # term goes through `cross_entropy` below, so no method reads the config for it
    label_smoothing = 0.0

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: Tensor, labels: Tensor, teachers: PendingTeachers | None = None,
                timer: SectionTimer = no_timer) -> tuple[Tensor, dict[str, Tensor]]:
        """Student forward and the method's student-only work (`student_side`) run first, while the teachers'
        streams work; the current stream waits for the teachers only then, right before `losses`."""
        with timer(STUDENT_FORWARD):
            feature, logits, early = self.run_student(images)
        outputs = teachers.wait() if teachers is not None else None
        with timer(LOSS):
            losses = self.losses(feature, logits, labels, outputs, **early)
        return logits, losses

    def run_student(self, images: Tensor) -> tuple[Tensor | None, Tensor, dict[str, Any]]:
        """(student feature or None, logits, `student_side`'s keyword arguments for `losses`)."""
        if self.needs_student_feature:
            feature, logits = self.student.forward_features(images)
        else:
            feature, logits = None, self.student(images)
        return feature, logits, self.student_side(feature)

    def student_side(self, student_feature: Tensor | None) -> dict[str, Any]:
        """Work that needs the student only (pFEED: the translator bodies), run before the wait for the
        teachers; returns extra keyword arguments for `losses`. None by default."""
        return {}

    def losses(self, student_feature: Tensor | None, logits: Tensor, labels: Tensor,
               teachers: TeacherOutputs | None) -> dict[str, Tensor]:
        raise NotImplementedError

    def cross_entropy(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The method's CE term against the labels (float32, batch mean), with the run's label smoothing."""
        return cross_entropy(logits, labels, self.label_smoothing)

    def trainable_extras(self) -> list[nn.Parameter]:
        """Parameters trained with the student but dropped at export (translators)."""
        return [p for name, p in self.named_parameters() if not name.startswith("student.")]


class Method:
    """One generation learning from the configured teachers; subclasses override what differs."""

    requires_teachers = False  # the config must list at least one teacher (checked before any work)
    uses_given_teachers = True  # whether the configured teachers are loaded at all

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg  # the config's `method` section (feed_fast.config.MethodConfig; that package imports this one)

    def num_generations(self) -> int:
        return 1

    def teachers_for(self, generation: int, given: Sequence[nn.Module], previous_student) -> list[nn.Module]:
        return list(given)

    def build(self, student: nn.Module, teacher_channels: Sequence[int]) -> Distiller:
        raise NotImplementedError

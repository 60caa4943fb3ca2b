"""What every distillation method shares. A method is a `Distiller`: an nn.Module owning the student and
the method's own trainable parts (translators), whose `forward` returns the logits and a dict of named
losses. The trainer sums the dict and never asks which method it runs. Teachers are not submodules: they
are frozen, run by the engine (one CUDA stream each) and arrive as `PendingTeachers`."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn


@dataclass
class TeacherOutputs:
    features: list[Tensor] | None  # one per teacher when the method asks for features
    logits: list[Tensor] | None  # one per teacher when the method asks for logits


class PendingTeachers(Protocol):
    def wait(self) -> TeacherOutputs:
        """Block the current stream until every teacher's outputs are ready."""


SectionTimer = Callable[[str], AbstractContextManager]


def no_timer(_name: str) -> AbstractContextManager:
    return contextlib.nullcontext()


class Distiller(nn.Module):
    needs_teacher_features = False
    needs_teacher_logits = False
    needs_student_feature = False

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: Tensor, labels: Tensor, teachers: PendingTeachers | None = None,
                timer: SectionTimer = no_timer) -> tuple[Tensor, dict[str, Tensor]]:
        with timer("student_forward"):
            if self.needs_student_feature:
                feature, logits = self.student.forward_features(images)
            else:
                feature, logits = None, self.student(images)
        outputs = teachers.wait() if teachers is not None else None
        with timer("loss"):
            losses = self.losses(feature, logits, labels, outputs)
        return logits, losses

    def losses(self, student_feature: Tensor | None, logits: Tensor, labels: Tensor,
               teachers: TeacherOutputs | None) -> dict[str, Tensor]:
        raise NotImplementedError

    def trainable_extras(self) -> list[nn.Parameter]:
        """Parameters trained with the student but dropped at export (translators)."""
        return [p for name, p in self.named_parameters() if not name.startswith("student.")]

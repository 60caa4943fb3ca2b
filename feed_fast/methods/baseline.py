"""Cross-entropy only: the student trained alone, the reference every other method is compared to."""
from __future__ import annotations

from .base import Distiller, Method


class Baseline(Distiller):
    def losses(self, student_feature, logits, labels, teachers):
        return {"ce": self.cross_entropy(logits, labels)}


class BaselineMethod(Method):
    uses_given_teachers = False

    def teachers_for(self, generation, given, previous_student):
        return []  # teachers in the config are ignored: nothing to load or run

    def build(self, student, teacher_channels):
        return Baseline(student)

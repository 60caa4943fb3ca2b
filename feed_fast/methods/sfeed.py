"""Sequential FEED (born-again style): generation g+1, the same architecture freshly initialised, learns from
generation g through a fresh translator with the FEED loss. Generation 1 trains with CE alone unless teachers
are given, in which case it learns from them as pFEED."""
from __future__ import annotations

from .base import Method
from .baseline import Baseline
from .pfeed import PFEED, pfeed_options


class SFEEDMethod(Method):
    def num_generations(self) -> int:
        return self.cfg.generations

    def teachers_for(self, generation, given, previous_student):
        return list(given) if generation == 0 else [previous_student]

    def build(self, student, teacher_channels):
        if not teacher_channels:
            return Baseline(student)
        return PFEED(student, teacher_channels, **pfeed_options(self.cfg))

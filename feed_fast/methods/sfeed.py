"""Sequential FEED (born-again style): generation g+1, the same architecture freshly initialised, learns from
generation g through a fresh translator with the FEED loss. Generation 1 trains with CE alone unless teachers
are given, in which case it learns from them as pFEED."""
from __future__ import annotations

from .baseline import Baseline
from .pfeed import PFEED


def sfeed_distiller(student, teacher_channels, **pfeed_kw):
    if not teacher_channels:
        return Baseline(student)
    return PFEED(student, teacher_channels, **pfeed_kw)

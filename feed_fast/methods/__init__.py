"""Distillation methods as small interchangeable classes (mdistiller style).

A `Method` says how many generations it trains, which teachers each generation learns from, and builds that
generation's `Distiller` (an nn.Module whose forward returns logits and a dict of named losses). The engine
loops over generations and sums the loss dict; it never branches on a method's name.

- `baseline`: CE only.
- `kd`: CE + Hinton KD against the mean of the teachers' softened logits.
- `pfeed`: CE + beta * sum_k FEED_k, K teachers and K translators; `kd.enabled` adds KD on top.
- `sfeed`: `generations` students of the student's architecture; generation g+1 learns from generation g.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import Distiller, PendingTeachers, TeacherOutputs, no_timer
from .baseline import Baseline
from .kd import KD
from .pfeed import PFEED
from .sfeed import sfeed_distiller


def _pfeed_kwargs(cfg: dict) -> dict:
    kd = cfg["kd"]
    return {
        "beta": cfg["beta"],
        "translator": dict(cfg["translator"]),
        "backend": cfg["backend"],
        "kd_weight": kd["weight"] if kd["enabled"] else 0.0,
        "kd_temperature": kd["temperature"],
    }


class Method:
    """One generation learning from the configured teachers (baseline, kd, pfeed)."""

    uses_given_teachers = True  # whether the configured teachers are loaded at all

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg

    def num_generations(self) -> int:
        return 1

    def teachers_for(self, generation: int, given: Sequence[nn.Module], previous_student) -> list[nn.Module]:
        return list(given)

    def build(self, student: nn.Module, teacher_channels: Sequence[int]) -> Distiller:
        raise NotImplementedError


class BaselineMethod(Method):
    uses_given_teachers = False

    def teachers_for(self, generation, given, previous_student):
        return []  # teachers in the config are ignored: nothing to load or run

    def build(self, student, teacher_channels):
        return Baseline(student)


class KDMethod(Method):
    def build(self, student, teacher_channels):
        kd = self.cfg["kd"]
        return KD(student, temperature=kd["temperature"], weight=kd["weight"])


class PFEEDMethod(Method):
    def build(self, student, teacher_channels):
        return PFEED(student, teacher_channels, **_pfeed_kwargs(self.cfg))


class SFEEDMethod(Method):
    def num_generations(self) -> int:
        return int(self.cfg["generations"])

    def teachers_for(self, generation, given, previous_student):
        return list(given) if generation == 0 else [previous_student]

    def build(self, student, teacher_channels):
        return sfeed_distiller(student, teacher_channels, **_pfeed_kwargs(self.cfg))


METHODS = {"baseline": BaselineMethod, "kd": KDMethod, "pfeed": PFEEDMethod, "sfeed": SFEEDMethod}


def build_method(cfg: dict) -> Method:
    if cfg["name"] not in METHODS:
        raise ValueError(f"method.name must be one of {sorted(METHODS)}, got {cfg['name']!r}")
    return METHODS[cfg["name"]](cfg)


__all__ = [
    "KD",
    "METHODS",
    "PFEED",
    "Baseline",
    "Distiller",
    "Method",
    "PendingTeachers",
    "TeacherOutputs",
    "build_method",
    "no_timer",
]

"""Distillation methods by name. Each is one file holding its recipe (a `Method`) and its step (a `Distiller`),
see base.py; this module only registers them. Adding a method: a file and one line in METHODS.

- `baseline`: CE only.
- `kd`: CE + Hinton KD against the mean of the teachers' softened logits.
- `pfeed`: CE + beta * sum_k FEED_k, K teachers and K translators; `kd.enabled` adds KD on top.
- `sfeed`: `generations` students of the student's architecture; generation g+1 learns from generation g.
"""
from __future__ import annotations

from .base import Distiller, Method, PendingTeachers, TeacherOutputs
from .baseline import Baseline, BaselineMethod
from .kd import KD, KDMethod
from .pfeed import PFEED, PFEEDMethod
from .sfeed import SFEEDMethod

METHODS: dict[str, type[Method]] = {
    "baseline": BaselineMethod,
    "kd": KDMethod,
    "pfeed": PFEEDMethod,
    "sfeed": SFEEDMethod,
}


def build_method(cfg) -> Method:
    """The registered Method for the config's `method` section (a feed_fast.config.MethodConfig)."""
    if cfg.name not in METHODS:
        raise ValueError(f"method.name must be one of {sorted(METHODS)}, got {cfg.name!r}")
    return METHODS[cfg.name](cfg)


__all__ = ["KD", "METHODS", "PFEED", "Baseline", "Distiller", "Method", "PendingTeachers", "TeacherOutputs",
           "build_method"]

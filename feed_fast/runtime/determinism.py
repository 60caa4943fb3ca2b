"""Deterministic algorithms and cuDNN autotuning are process-wide switches: a run sets them for its own
duration and puts back what it found, so a caller (a test, a notebook, the demo's next run) is unaffected."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def determinism(deterministic: bool) -> Iterator[None]:
    """deterministic: deterministic algorithms (warn-only where none exists) and no cuDNN autotuning, so a
    resumed run repeats an uninterrupted one; else cuDNN picks the fastest kernels for the shapes it sees."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        else:
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]

"""The step clock: time per section of a training step (data wait, teachers, student forward, loss, backward,
optimizer; or, when the whole step is compiled, data wait and the compiled step). CUDA events on a GPU (read once per log interval, so timing never syncs a step), perf_counter on
the CPU. It lives beside the device decision because which clock runs is a device decision; the methods time
their own sections with it, the engine the rest.

Sections are named by the constants below; an unknown name raises, so a misspelled section cannot silently
report 0."""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

DATA_WAIT = "data_wait"
TEACHERS = "teachers"
STUDENT_FORWARD = "student_forward"
LOSS = "loss"
BACKWARD = "backward"
OPTIMIZER = "optimizer"
COMPILED_STEP = "compiled_step"  # train.compile=step: the whole step, one compiled unit (one CUDA graph on a GPU)
SECTIONS = (DATA_WAIT, TEACHERS, STUDENT_FORWARD, LOSS, BACKWARD, OPTIMIZER, COMPILED_STEP)

SectionTimer = Callable[[str], AbstractContextManager]  # `with timer(LOSS): ...`


def no_timer(name: str) -> AbstractContextManager:
    check_section(name)
    return contextlib.nullcontext()


def check_section(name: str) -> None:
    if name not in SECTIONS:
        raise ValueError(f"unknown step section {name!r}; the sections are {SECTIONS}")


class StepTimer:
    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.enabled = enabled
        self._pending: list[tuple[str, object, object]] = []
        self.totals_ms: dict[str, float] = defaultdict(float)
        self.steps = 0

    @contextlib.contextmanager
    def __call__(self, name: str):
        check_section(name)
        if not self.enabled:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
        else:
            start = time.perf_counter()
            yield
            self.totals_ms[name] += (time.perf_counter() - start) * 1e3

    def add_ms(self, name: str, ms: float) -> None:
        """Host-side time (data wait is measured on the host on every device)."""
        check_section(name)
        if self.enabled:
            self.totals_ms[name] += ms

    def add_span(self, name: str, start, ends) -> None:
        """CUDA: from `start` to the latest of `ends` (teachers on their own streams overlap each other)."""
        check_section(name)
        if self.enabled and self.cuda:
            for end in ends:
                self._pending.append((name + "#span", start, end))

    def step_done(self) -> None:
        self.steps += 1

    def total_ms(self, name: str) -> float:
        """Host-measured milliseconds of a section since the last reset (data wait: the loader's share)."""
        check_section(name)
        return self.totals_ms.get(name, 0.0)

    def collect(self) -> dict[str, float]:
        """Mean milliseconds per step for each section since the last reset."""
        if self._pending:
            torch.cuda.synchronize()
            spans: dict[tuple[str, int], float] = {}
            for name, start, end in self._pending:
                ms = start.elapsed_time(end)
                if name.endswith("#span"):  # the longest of one launch's teacher streams
                    key = (name[: -len("#span")], id(start))
                    spans[key] = max(spans.get(key, 0.0), ms)
                else:
                    self.totals_ms[name] += ms
            for (name, _), ms in spans.items():
                self.totals_ms[name] += ms
            self._pending.clear()
        steps = max(self.steps, 1)
        return {name: self.totals_ms.get(name, 0.0) / steps for name in SECTIONS}

    def reset(self) -> None:
        self._pending.clear()
        self.totals_ms = defaultdict(float)
        self.steps = 0

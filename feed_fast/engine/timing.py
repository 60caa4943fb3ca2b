"""Step-time breakdown: data wait, teachers, student forward, loss, backward, optimizer. CUDA events on a
GPU (read once per log interval, so timing never syncs a step), perf_counter on the CPU."""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

SECTIONS = ("data_wait", "teachers", "student_forward", "loss", "backward", "optimizer")


class StepTimer:
    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = enabled
        self._pending: list[tuple[str, object, object]] = []
        self.totals_ms: dict[str, float] = defaultdict(float)
        self.steps = 0

    @contextlib.contextmanager
    def __call__(self, name: str):
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
        if self.enabled:
            self.totals_ms[name] += ms

    def add_span(self, name: str, start, ends) -> None:
        """CUDA: from `start` to the latest of `ends` (teachers on their own streams overlap each other)."""
        if self.enabled and self.cuda:
            for end in ends:
                self._pending.append((name + "#span", start, end))

    def step_done(self) -> None:
        self.steps += 1

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

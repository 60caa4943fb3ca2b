"""An epoch's statistics: the mean of each named loss over the samples seen, images/s and the share of time
spent waiting for data. The loss sums are one float64 vector on the device, added to with one kernel per step
(the step hands its losses as one vector, `NamedLosses.vector`; no host sync); the sample count is a host
number. Both go into last.pt, summed over the ranks (rank 0 carries the totals on, the others start again from
zero), so an epoch resumed mid-way, on any number of processes, reports the same means as an uninterrupted one."""
from __future__ import annotations

import time

import torch
from torch import Tensor

from ..runtime.distributed import DistInfo, all_reduce_sum
from ..runtime.timing import DATA_WAIT, StepTimer

SAMPLES = "samples"  # the last entry of the vector; the others are named by the losses


class EpochStats:
    def __init__(self, device: torch.device, saved: dict[str, float] | None = None, *, keep: bool = True) -> None:
        """`saved`: what `state()` returned (the sums of the epoch's steps before an interruption); with
        `keep=False` (ranks other than 0 on a resume) only its loss names, the sums starting from zero."""
        saved = dict(saved or {})
        self.device = device
        self.names = [name for name in saved if name != SAMPLES]  # loss names, fixed by the first step
        values = [saved[name] if keep else 0.0 for name in self.names]
        self.sums = torch.tensor(values, dtype=torch.float64, device=device)
        self.samples = float(saved.get(SAMPLES, 0.0)) if keep else 0.0
        self.start()

    def start(self) -> None:
        """Start the clock and the image count of this call (a resumed epoch's rate counts its own steps)."""
        self.images, self.started = 0, time.perf_counter()

    def add(self, losses: dict[str, Tensor], batch: int) -> None:
        """`losses`: name -> 0-d tensor; a `NamedLosses` brings them stacked already (`.vector`)."""
        if not self.names:
            self.names = list(losses)
            self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
        elif list(losses) != self.names:
            raise ValueError(f"the step's losses changed names within an epoch: {list(losses)} vs {self.names}")
        vector = getattr(losses, "vector", None)
        if vector is None:
            vector = torch.stack([losses[name].detach() for name in self.names])
        self.sums.add_(vector.detach(), alpha=batch)  # float32 values into the float64 sums: one kernel
        self.samples += batch
        self.images += batch

    def state(self, dist: DistInfo | None = None) -> dict[str, float]:
        """The sums so far; with `dist`, summed over the ranks (a collective: every rank calls it)."""
        values = torch.cat([self.sums, self.sums.new_tensor([self.samples])])
        if dist is not None:
            values = all_reduce_sum(values, dist)
        return dict(zip([*self.names, SAMPLES], values.tolist()))

    def summary(self, dist: DistInfo, timer: StepTimer) -> dict:
        """{loss: {name: mean over every rank's samples, total}, images_per_sec (all ranks), data_wait_fraction}."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        totals = all_reduce_sum(torch.cat([self.sums, self.sums.new_tensor([self.samples])]), dist).tolist()
        count = max(totals[-1], 1.0)
        loss = {name: value / count for name, value in zip(self.names, totals)}
        loss["total"] = sum(loss.values())
        return {"loss": loss, "images_per_sec": self.images * dist.world_size / elapsed,
                "data_wait_fraction": timer.total_ms(DATA_WAIT) / 1e3 / elapsed}

"""`train.ema`: an exponential moving average of the student, evaluated each epoch beside the raw student and
exported as model_ema.pt (torchvision's reference script's `--model-ema`, timm's ModelEmaV3).

What is averaged: every floating-point parameter *and* buffer, BatchNorm's running mean and variance included
(as torchvision's `ExponentialMovingAverage(use_buffers=True)` and timm do), so the EMA model carries statistics
that match its own averaged weights; integer buffers (BatchNorm's `num_batches_tracked`) are copied.

When: after an optimizer step, every `every` optimizer steps (torchvision's `model_ema_steps`). Update k (at
optimizer step s) is `ema = decay * ema + (1 - decay) * student` (one `torch._foreach_lerp_`), except while
s <= `warmup_steps`, when the EMA copies the student (torchvision resets its EMA during the lr warm-up the same
way): the random initialisation never lingers in the average. `decay` is per update, as given (torchvision's
script rescales its decay by batch size, world size and epochs; here the config holds the number used).

The average lives on the student's device, outside the Distiller (so no optimizer or DDP sees it), in eval mode
without gradients. Under torchrun every rank updates its own copy from the weights DDP keeps identical; the
BatchNorm buffers differ per rank within an epoch (each rank's running statistics see its own batches), so the
trainer gives every rank rank 0's EMA buffers wherever it evaluates or saves (as it does for the student)."""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..config import EMAConfig


class StudentEMA:
    def __init__(self, student: nn.Module, cfg: EMAConfig) -> None:
        """`student`: the model the optimizer trains (before any `torch.compile` of its entry points: the copy
        must be a plain module). The EMA starts as a copy of it."""
        self.decay, self.every, self.warmup_steps = cfg.decay, cfg.every, cfg.warmup_steps
        self.model = copy.deepcopy(student).eval().requires_grad_(False)
        self.steps = 0  # optimizer steps seen (warm-up and `every` count them); in last.pt
        self._source = student
        self._pairs = None  # (averaged, source) tensor lists, gathered once

    def pairs(self) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """(EMA floats, student floats, EMA integers, student integers), matched by name."""
        if self._pairs is None:
            mine = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
            theirs = dict(self._source.named_parameters()) | dict(self._source.named_buffers())
            if mine.keys() != theirs.keys():
                raise RuntimeError("the EMA copy and the student have different tensors")
            floats = [k for k, v in mine.items() if v.is_floating_point()]
            ints = [k for k in mine if k not in floats]
            self._pairs = ([mine[k] for k in floats], [theirs[k].detach() for k in floats],
                           [mine[k] for k in ints], [theirs[k].detach() for k in ints])
        return self._pairs

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Count the step; update the average if this step is one of every `every`. No host sync."""
        self.steps += 1
        if self.steps % self.every:
            return
        ema_floats, floats, ema_ints, ints = self.pairs()
        if self.steps <= self.warmup_steps:
            torch._foreach_copy_(ema_floats, floats)
        else:
            torch._foreach_lerp_(ema_floats, floats, 1.0 - self.decay)
        if ema_ints:
            torch._foreach_copy_(ema_ints, ints)

    def unaveraged(self) -> str | None:
        """Why the average holds no averaging update yet, in one line naming the setting to change; None when it
        holds one. Without one it is the student's initial weights (no update: `every` more than the steps taken)
        or a copy of the student (every update within the warm-up), not an average. The trainer says so at
        export."""
        first_average = (self.warmup_steps // self.every + 1) * self.every  # the first step whose update averages
        if self.steps >= first_average:
            return None
        if self.steps < self.every:
            return (f"train.ema was never updated: it updates every {self.every} optimizer steps and this run took "
                    f"{self.steps}, so the EMA export holds the student's initial weights; set train.ema.every to "
                    f"at most {max(self.steps, 1)}")
        last_update = self.steps // self.every * self.every
        return (f"train.ema was never averaged: all its updates fell within train.ema.warmup_steps="
                f"{self.warmup_steps} (this run took {self.steps} optimizer steps), so the EMA export is a copy of "
                f"the student; set train.ema.warmup_steps below {last_update}")

    def plain_module(self) -> nn.Module:
        """The averaged model as the export holds it (see `student_export`)."""
        return self.model.plain_module()

    def state_dict(self) -> dict:
        return {"state_dict": self.plain_module().state_dict(), "steps": self.steps}

"""torchvision's MixUp and CutMix (transforms.v2 semantics, as its reference train.py uses them) on the device,
after the loader and before the teachers and the student: `train.mixup_alpha`, `train.cutmix_alpha`.

Per micro-batch, one draw (`draw_mix`), on the host, from a generator seeded by the batch's place in the run:
- which of the two (both alphas > 0: even odds, torchvision's RandomChoice; else the one that is on);
- MixUp: lam ~ Beta(alpha, alpha); images = lam * x + (1 - lam) * x.roll(1, 0); the label weight is lam;
- CutMix: lam ~ Beta(alpha, alpha), a box centred on a uniform pixel with sides sqrt(1 - lam) times the image's
  (halves truncated, clipped to the image), pasted from x.roll(1, 0); the label weight is 1 - box area / image
  area (torchvision's lam_adjusted).
The pairs are the batch against itself rolled by one (torchvision's pairing). The labels become soft:
weight * one_hot(y) + (1 - weight) * one_hot(y.roll(1, 0)), float32 (B, classes).

What each method's targets become (docs/recipe.md): the teachers and the student see the same mixed images; CE
takes the soft labels (`F.cross_entropy` with probabilities, label smoothing applied on top as torchvision does);
KD distils the teachers' outputs on the mixed images; FEED matches the teachers' features of the mixed images.

No host sync: the draw is Python numbers, the device work is a roll, a multiply-add or a slice copy, and a
scatter into zeros for the one-hot labels. The seed is a function of (train.seed + generation, the micro-batch's
number in the run's global order): (step * accumulate + micro) * processes + rank, as loaders/sampling.py numbers
micro-batches, with the global optimizer step from the lr scheduler, which last.pt holds. So a resumed run repeats
the uninterrupted run's draws exactly, and one resumed on another number of processes with the same global batch
and micro-batch (engine/layout.py) draws the same for the same samples."""
from __future__ import annotations

import math
import random
from typing import NamedTuple

import torch
from torch import Tensor

MIX_STREAM = 0x4D4958  # keeps these draws apart from the loaders' (same run seed)


class MixDraw(NamedTuple):
    kind: str  # "mixup" or "cutmix"
    weight: float  # the label weight of each sample itself (1 - weight: its partner's, the previous sample)
    box: tuple[int, int, int, int] | None  # CutMix's (x1, y1, x2, y2) pasted from the partner; None for MixUp


def draw_mix(rng: random.Random, mixup_alpha: float, cutmix_alpha: float, height: int, width: int) -> MixDraw:
    """One batch's MixUp or CutMix parameters, as torchvision's v2 `MixUp.make_params` / `CutMix.make_params`
    compute them (their torch draws replaced by `rng`'s)."""
    if mixup_alpha > 0 and cutmix_alpha > 0:
        kind = "mixup" if rng.random() < 0.5 else "cutmix"
    else:
        kind = "mixup" if mixup_alpha > 0 else "cutmix"
    if kind == "mixup":
        return MixDraw(kind, rng.betavariate(mixup_alpha, mixup_alpha), None)
    lam = rng.betavariate(cutmix_alpha, cutmix_alpha)
    r_x, r_y = rng.randrange(width), rng.randrange(height)
    r = 0.5 * math.sqrt(1.0 - lam)
    r_w_half, r_h_half = int(r * width), int(r * height)
    x1, y1 = max(r_x - r_w_half, 0), max(r_y - r_h_half, 0)
    x2, y2 = min(r_x + r_w_half, width), min(r_y + r_h_half, height)
    return MixDraw(kind, 1.0 - (x2 - x1) * (y2 - y1) / (width * height), (x1, y1, x2, y2))


def mix_batch(images: Tensor, labels: Tensor, draw: MixDraw, num_classes: int) -> tuple[Tensor, Tensor]:
    """(mixed images in their dtype and memory format, soft labels float32 (B, num_classes)) for one draw."""
    rolled = images.roll(1, 0)
    if draw.box is None:
        mixed = rolled.mul_(1.0 - draw.weight).add_(images.mul(draw.weight))  # torchvision's expression
    else:
        x1, y1, x2, y2 = draw.box
        mixed = images.clone(memory_format=torch.preserve_format)
        mixed[..., y1:y2, x1:x2] = rolled[..., y1:y2, x1:x2]
    one_hot = torch.zeros(labels.shape[0], num_classes, device=labels.device).scatter_(1, labels[:, None], 1.0)
    soft = one_hot.roll(1, 0).mul_(1.0 - draw.weight).add_(one_hot.mul(draw.weight))
    return mixed, soft


class BatchMix:
    """`train.mixup_alpha` / `train.cutmix_alpha` for a TrainStep: `mix(images, labels, step, micro)` mixes the
    micro-batch `micro` of optimizer step `step` (0-based over the run) of this process."""

    def __init__(self, *, mixup_alpha: float, cutmix_alpha: float, num_classes: int, seed: int, accumulate: int = 1,
                 rank: int = 0, world_size: int = 1) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or not (mixup_alpha > 0 or cutmix_alpha > 0):
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0 and one of them > 0, got {mixup_alpha} "
                             f"and {cutmix_alpha}")
        self.mixup_alpha, self.cutmix_alpha, self.num_classes = float(mixup_alpha), float(cutmix_alpha), num_classes
        self.seed, self.accumulate, self.rank, self.world_size = int(seed), accumulate, rank, world_size

    def draw(self, step: int, micro: int, height: int, width: int) -> MixDraw:
        """The draw of micro-batch `micro` of optimizer step `step` on this rank: numbered (step * accumulate +
        micro) * processes + rank, the micro-batch's place in the run's global order (loaders/sampling.py)."""
        number = (step * self.accumulate + micro) * self.world_size + self.rank
        rng = random.Random(hash((MIX_STREAM, self.seed, number)) & 0x7FFF_FFFF_FFFF_FFFF)
        return draw_mix(rng, self.mixup_alpha, self.cutmix_alpha, height, width)

    def __call__(self, images: Tensor, labels: Tensor, step: int, micro: int) -> tuple[Tensor, Tensor]:
        return mix_batch(images, labels, self.draw(step, micro, images.shape[-2], images.shape[-1]),
                         self.num_classes)

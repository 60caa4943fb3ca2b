"""The geometry both image-folder backends share, computed the way torchvision computes it, so that
DALI and torchvision crop the same pixels (DALI's own resize_shorter rounds the long side differently).

A training sample's random crop and flip are drawn here, on the host, from that sample's own seed: the
torchvision workers apply them to the decoded image, the DALI pipeline decodes only that window. Nothing
random happens inside either backend, so both crop the same boxes and a resumed epoch repeats its crops.

The recipe's auto-augment ops and random-erasing boxes (`train_augment`, docs/recipe.md) are drawn the same
way, from the same sample seed: both backends apply the same ops, with torchvision's magnitude tables, and erase
the same boxes, and a resumed epoch repeats them."""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import NamedTuple

VAL_RESIZE_RATIO = 256 / 224  # ImageNet convention: resize to 256, center-crop 224
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def val_resize_size(image_size: int) -> int:
    return int(image_size * VAL_RESIZE_RATIO)


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(shorter): the short side becomes `shorter`, the long
    side int(shorter * long / short), truncated."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def random_resized_crop_box(height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) drawn like torchvision's RandomResizedCrop.get_params
    (scale 0.08-1, log-uniform ratio 3/4-4/3, 10 tries, then a center crop of the clamped ratio), but
    from `rng`, so each sample's crop depends only on its own seed and not on worker RNG state."""
    area = height * width
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            return rng.randint(0, height - crop_h), rng.randint(0, width - crop_w), crop_h, crop_w
    in_ratio = width / height
    if in_ratio < min(CROP_RATIO):
        crop_w, crop_h = width, round(width / min(CROP_RATIO))
    elif in_ratio > max(CROP_RATIO):
        crop_h, crop_w = height, round(height * max(CROP_RATIO))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class TrainCrop(NamedTuple):
    """One training sample's augmentation: the crop box in the image's pixels (then scaled to the output
    size), and whether the result is mirrored left-right."""
    top: int
    left: int
    height: int
    width: int
    flip: bool


def train_crop(seed: int, height: int, width: int) -> TrainCrop:
    """RandomResizedCrop's box then RandomHorizontalFlip's coin, both drawn from `seed` for an image of
    `height` x `width` pixels (as decoded, before any EXIF rotation: Pillow's size)."""
    rng = random.Random(seed)
    box = random_resized_crop_box(height, width, rng)
    return TrainCrop(*box, flip=rng.random() < 0.5)


# --- torchvision's recipe: auto-augment and random erasing (docs/recipe.md) ------------------------------------
AUTO_AUGMENTS = ("ta_wide", "ra")  # torchvision's --auto-augment values implemented on both backends
NUM_MAGNITUDE_BINS = 31  # torchvision's default for TrivialAugmentWide and RandAugment
ERASE_SCALE = (0.02, 0.33)  # torchvision's RandomErasing defaults (area fraction, aspect ratio h/w)
ERASE_RATIO = (0.3, 3.3)
AUGMENT_STREAM = 0x41554741  # keeps a sample's augmentation draws apart from its crop draws (same sample seed)


@dataclass(frozen=True)
class Augment:
    """The recipe's per-sample augmentations after the crop and flip (the config's `data.augment`), on both
    image-folder backends with torchvision's meaning:

    - auto_augment: None; "ta_wide", torchvision's TrivialAugmentWide (one op of 14, a magnitude bin of 31 drawn
      per sample); "ra", RandAugment (`ra_num_ops` ops, each at bin `ra_magnitude`). Bilinear, fill 0, on the
      uint8 crop, as torchvision's train.py applies them.
    - random_erase: RandomErasing's p (scale 0.02-0.33, ratio 0.3-3.3, value 0) on the normalized image."""
    auto_augment: str | None = None
    ra_num_ops: int = 2
    ra_magnitude: int = 9
    random_erase: float = 0.0

    def __post_init__(self):
        if self.auto_augment is not None and self.auto_augment not in AUTO_AUGMENTS:
            raise ValueError(f"auto_augment must be None or one of {AUTO_AUGMENTS}, got {self.auto_augment!r}")
        if not (isinstance(self.ra_num_ops, int) and self.ra_num_ops >= 1):
            raise ValueError(f"ra_num_ops must be an int >= 1, got {self.ra_num_ops!r}")
        if not (isinstance(self.ra_magnitude, int) and 0 <= self.ra_magnitude < NUM_MAGNITUDE_BINS):
            raise ValueError(f"ra_magnitude must be an int in [0, {NUM_MAGNITUDE_BINS - 1}], got {self.ra_magnitude!r}")
        if not 0.0 <= self.random_erase <= 1.0:
            raise ValueError(f"random_erase must be a probability in [0, 1], got {self.random_erase!r}")

    @property
    def ops_per_sample(self) -> int:
        return {None: 0, "ta_wide": 1, "ra": self.ra_num_ops}[self.auto_augment]

    @property
    def active(self) -> bool:
        return self.auto_augment is not None or self.random_erase > 0


NO_AUGMENT = Augment()


@functools.cache
def augment_space(policy: str) -> tuple[tuple[str, object, bool], ...]:
    """(op name, magnitudes(num_bins, height, width) -> tensor or None, signed) in torchvision's own order and
    with its own magnitude tables (`TrivialAugmentWide` / `RandAugment` of transforms.v2): one table for both
    backends, the DALI suite is built from it."""
    from torchvision.transforms import v2

    space = {"ta_wide": v2.TrivialAugmentWide, "ra": v2.RandAugment}[policy]._AUGMENTATION_SPACE
    return tuple((name, magnitudes, signed) for name, (magnitudes, signed) in space.items())


class AugmentOp(NamedTuple):
    """One auto-augment op drawn for a sample: its index in `augment_space`, its magnitude bin, and whether a
    signed op's magnitude is negated (torchvision's `torch.rand(()) <= 0.5`)."""
    op: int
    bin: int
    negate: bool


def op_magnitude(policy: str, op: AugmentOp, height: int, width: int) -> tuple[str, float]:
    """(op name, signed magnitude) as torchvision's forward computes them for an image of height x width."""
    name, magnitudes, signed = augment_space(policy)[op.op]
    table = magnitudes(NUM_MAGNITUDE_BINS, height, width)
    if table is None:
        return name, 0.0
    magnitude = float(table[op.bin])
    return name, -magnitude if signed and op.negate else magnitude


class EraseBox(NamedTuple):
    top: int
    left: int
    height: int
    width: int


class SampleAugment(NamedTuple):
    ops: tuple[AugmentOp, ...]  # applied in order after the flip (RandAugment: ra_num_ops of them)
    erase: EraseBox | None  # erased to 0 after normalization


def random_erase_box(size: int, rng: random.Random) -> EraseBox | None:
    """RandomErasing.get_params on a size x size image: up to 10 tries of an area uniform(0.02, 0.33) of the
    image and an aspect ratio exp(uniform(log 0.3, log 3.3)); None (nothing erased) if none fits."""
    log_ratio = (math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
    for _ in range(10):
        erase_area = size * size * rng.uniform(*ERASE_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        height, width = round(math.sqrt(erase_area * aspect)), round(math.sqrt(erase_area / aspect))
        if height < size and width < size:
            return EraseBox(rng.randint(0, size - height), rng.randint(0, size - width), height, width)
    return None


def train_augment(seed: int, augment: Augment, size: int) -> SampleAugment:
    """A sample's auto-augment ops and erase box, drawn from its own seed (the crop's, on a stream of its own so
    the crops stay what they are without the switches). Each op: uniform over the policy's 14, its bin uniform
    over 31 (ta_wide) or `ra_magnitude` (ra), a coin for the sign. The erase: RandomErasing's coin with p
    `random_erase`, then its box on the size x size output. Depends on (seed, switches, size) alone."""
    if not augment.active:
        return SampleAugment((), None)
    rng = random.Random(hash((int(seed), AUGMENT_STREAM)) & 0x7FFF_FFFF_FFFF_FFFF)
    ops = []
    for _ in range(augment.ops_per_sample):
        op = rng.randrange(len(augment_space(augment.auto_augment)))
        magnitude_bin = rng.randrange(NUM_MAGNITUDE_BINS) if augment.auto_augment == "ta_wide" else augment.ra_magnitude
        ops.append(AugmentOp(op, magnitude_bin, rng.random() < 0.5))
    erase = random_erase_box(size, rng) if augment.random_erase > 0 and rng.random() < augment.random_erase else None
    return SampleAugment(tuple(ops), erase)

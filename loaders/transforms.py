"""The geometry both image-folder backends share, computed the way torchvision computes it, so that
DALI and torchvision crop the same pixels (DALI's own resize_shorter rounds the long side differently).

A training sample's random crop and flip are drawn here, on the host, from that sample's own seed: the
torchvision workers apply them to the decoded image, the DALI pipeline decodes only that window. Nothing
random happens inside either backend, so both crop the same boxes and a resumed epoch repeats its crops."""
from __future__ import annotations

import math
import random
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

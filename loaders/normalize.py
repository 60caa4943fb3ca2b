"""Per-channel normalization constants and the one batched op that turns uint8 pixels into the
normalized float batch the models take."""
from __future__ import annotations

import functools

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The constants the CIFAR distillation code bases (CRD/RepDistiller, mdistiller) use.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@functools.lru_cache(maxsize=16)
def _scale_and_shift(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Made once per device: building them per batch would copy from host memory every step."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, 3, 1, 1)
    return scale, shift


def normalize_uint8(images: torch.Tensor, mean, std, *, dtype: torch.dtype) -> torch.Tensor:
    """(B, 3, H, W) uint8 in [0, 255] -> (x / 255 - mean) / std in `dtype`, as one multiply-add
    computed in float32 (fp16/bf16 outputs are rounded once, at the end). Keeps the memory format."""
    scale, shift = _scale_and_shift(tuple(mean), tuple(std), images.device)
    return torch.addcmul(shift, images.float(), scale).to(dtype)

"""timm models as students and teachers: `timm/<arch>[.<tag>]`, e.g. `timm/resnet50.a1_in1k`.

timm is optional (`pip install 'feed-fast[timm]'`): it is imported only when a `timm/` name is checked or
built, so `import feed_fast` never imports it.

The feature tap is timm's own `forward_features` (and the logits its `forward_head` of that map, which is what
timm's `forward` computes), so the tap follows the project's rule (last stage, before global pooling) for
CNN families:
- ResNet / ResNeXt / RegNet (`resnet50`, `resnext50_32x4d`, `regnety_016`, ...): the last stage's output after
  its final ReLU (2048x7x7 for ResNet-50 at 224 px), the same map as torchvision's `layer4`.
- ConvNeXt: the last stage's output, a residual sum with no activation after it (768x7x7 for convnext_tiny);
  the head's LayerNorm comes after pooling, as in torchvision's `features`.
- EfficientNet / MobileNetV2 (timm's EfficientNet class): after the final 1x1 conv, its BatchNorm and
  activation (1280x7x7 for efficientnet_b0), as torchvision's `features`.
- MobileNetV3: the last block's output (960x7x7 for mobilenetv3_large_100); its 1x1 head conv comes after
  pooling, as in torchvision's `features`.
Models whose `forward_features` is not an (N, C, H, W) map with C = `num_features` (ViT tokens, Swin's
channels-last maps) are refused with an error when built.

Weights: `weights="pretrained"` loads timm's pretrained weights for the name's tag (timm's default tag when
the name has none) through timm, i.e. from the Hugging Face cache (HF_HOME / HF_HUB_CACHE), downloading on
first use unless HF_HUB_OFFLINE=1, in which case only the cache is read. A checkpoint file loads into
`plain_module()`, which is the timm model itself: a student export loads into
`timm.create_model(arch, num_classes=...)`.
"""
from __future__ import annotations

import difflib
import warnings
from types import ModuleType

import torch
from torch import Tensor, nn

from .zoo_weights import WeightsUnavailable

PREFIX = "timm/"
PRETRAINED = "pretrained"  # the one weights spec timm models take


def normalization_mismatch(pretrained_cfg: dict) -> str | None:
    """Why the pretrained weights expect other inputs than feed-fast's ImageNet loaders give (ImageNet
    mean/std), or None. Some timm tags (e.g. resnet34.ra4_e3600_r224_in1k) were trained on mean = std = 0.5."""
    from ..loaders.normalize import IMAGENET_MEAN, IMAGENET_STD

    mean, std = tuple(pretrained_cfg.get("mean", IMAGENET_MEAN)), tuple(pretrained_cfg.get("std", IMAGENET_STD))
    expected = IMAGENET_MEAN + IMAGENET_STD
    if len(mean + std) == len(expected) and all(abs(a - b) < 1e-3 for a, b in zip(mean + std, expected)):
        return None
    return (f"its weights expect inputs normalized with mean={mean}, std={std}; feed-fast's ImageNet loaders "
            f"normalize with mean={IMAGENET_MEAN}, std={IMAGENET_STD}")


class TimmNotInstalledError(ImportError, ValueError):
    """timm is missing. A ValueError too, so config validation reports it like any other bad model name."""


def is_timm_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def import_timm(name: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise TimmNotInstalledError(
            f"model {name!r} needs timm, which is not installed: pip install 'feed-fast[timm]' (or pip install timm)",
            name="timm",
        ) from None
    return timm


def timm_arch(name: str) -> str:
    """`timm/resnet50.a1_in1k` -> `resnet50.a1_in1k` (what timm.create_model takes)."""
    return name[len(PREFIX):]


def check_timm_name(name: str) -> None:
    """Raise ValueError when timm does not know the architecture or its pretrained tag (checked offline, from
    timm's registry)."""
    arch = timm_arch(name)
    if not arch:
        raise ValueError(f"model {name!r}: expected timm/<architecture>[.<tag>], e.g. timm/resnet50.a1_in1k")
    timm = import_timm(name)
    base, _, tag = arch.partition(".")
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}: timm {timm.__version__} has no architecture {base!r}"
                         f" (timm.list_models()){hint}")
    if tag and not timm.list_pretrained(arch):
        known = ", ".join(PREFIX + n for n in timm.list_pretrained(base + ".*")) or "none"
        raise ValueError(f"unknown model {name!r}: timm has no tag {tag!r} for {base!r}; known: {known}")


def check_timm_weights(name: str, weights: str) -> None:
    """`weights` must be "pretrained", and timm must have pretrained weights for the name."""
    if weights != PRETRAINED:
        raise ValueError(f"weights={weights!r} for timm model {name!r}: timm models take weights: {PRETRAINED} "
                         "(timm's pretrained weights for the name's tag), or a checkpoint file instead")
    timm = import_timm(name)
    base = timm_arch(name).partition(".")[0]
    if not timm.list_pretrained(base + ".*"):
        raise ValueError(f"weights={weights!r}: timm has no pretrained weights for {name!r}; give a checkpoint")


class TimmFeatureModel(nn.Module):
    """A timm classifier with the project's model interface; `plain_module()` is the timm model itself.

    `kwargs` go to `timm.create_model` (e.g. drop_path_rate). With `weights="pretrained"` the classifier keeps
    its pretrained size, which must equal `num_classes`."""

    def __init__(self, name: str, num_classes: int, weights: str | None = None, **kwargs) -> None:
        super().__init__()
        check_timm_name(name)
        timm = import_timm(name)
        arch = timm_arch(name)
        if weights is not None:
            check_timm_weights(name, weights)
            pretrained_classes = timm.models.get_pretrained_cfg(arch).num_classes
            if pretrained_classes != num_classes:
                raise ValueError(f"weights {weights!r} of {name!r} give {pretrained_classes} classes, "
                                 f"the data has {num_classes}")
            try:
                self.net = timm.create_model(arch, pretrained=True, **kwargs)
            except OSError as err:  # not in the cache while offline, no network, ...
                raise WeightsUnavailable("timm", name, weights, err, "timm reads them from the Hugging Face cache "
                                         "(HF_HOME / HF_HUB_CACHE; with HF_HUB_OFFLINE=1 from there only)") from err
            if note := normalization_mismatch(self.net.pretrained_cfg):
                warnings.warn(f"timm model {name!r}: {note}", stacklevel=2)
        else:
            self.net = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
        self.name = name
        self.feature_channels = self._probe_channels()

    def _probe_channels(self) -> int:
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        # 64 px is enough for a CNN (a 2x2 map at stride 32); fixed-size models need their own size
        size = cfg["input_size"][-1] if cfg.get("fixed_input_size") else 64
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            feature = self.net.forward_features(torch.zeros(1, 3, size, size))
        self.net.train(was_training)
        channels = getattr(self.net, "num_features", None)
        if feature.dim() != 4 or feature.shape[1] != channels:
            raise ValueError(
                f"timm model {self.name!r} ({type(self.net).__name__}): forward_features gives shape "
                f"{tuple(feature.shape)}, not an (N, C, H, W) map with C = num_features ({channels}); FEED needs "
                "a CNN feature map (token outputs such as ViT's and channels-last maps such as Swin's are not "
                "supported)"
            )
        return channels

    def extract_features(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.net.forward_features(x)
        return feature, self.net.forward_head(feature)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def plain_module(self) -> nn.Module:
        return self.net

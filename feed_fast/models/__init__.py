"""Models by name. `build_model(name, num_classes, **kw)` returns an nn.Module with:

- `forward(x) -> logits`
- `forward_features(x) -> (feature, logits)`: the feature tap (last stage, after its activation, before
  pooling) and the logits from one forward
- `extract_features(x) -> feature`: the tap alone, the classifier head is not computed
- `feature_channels`: channels of the tap
- `plain_module()`: the module whose state dict is the student export (torchvision's or timm's own model, so
  an export loads into `torchvision.models.get_model(name, num_classes=...)` or
  `timm.create_model(arch, num_classes=...)`)

CIFAR names: resnet{8,14,20,32,44,56,110} (6n+2), wrn_{depth}_{k} (e.g. wrn_28_10, wrn_16_2),
resnext29_{C}x{W}d (resnext29_8x64d, resnext29_16x64d). `timm/<arch>[.<tag>]` (e.g. timm/resnet50.a1_in1k) is
a timm model (optional extra feed-fast[timm]; see timm_models.py). Anything else is looked up in torchvision
(resnet18, resnet34, resnet50, ...). Test-sized CIFAR ResNets: `widths=(4, 8, 16)`.

Weights specs (`check_weights`): torchvision models take a torchvision weights name
(ResNet34_Weights.IMAGENET1K_V1, or IMAGENET1K_V1 / DEFAULT as torchvision's builders accept); timm models take
`pretrained`; CIFAR models take none (a checkpoint file instead).
"""
from __future__ import annotations

import re

from torch import nn

from .cifar import CifarResNet, CifarResNeXt, WideResNet
from .timm_models import TimmFeatureModel, check_timm_name, check_timm_weights, is_timm_name

_RESNET = re.compile(r"^resnet(\d+)$")
_WRN = re.compile(r"^wrn_(\d+)_(\d+)$")
_RESNEXT = re.compile(r"^resnext(\d+)_(\d+)x(\d+)d$")
CIFAR_RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def is_cifar_model(name: str) -> bool:
    m = _RESNET.match(name)
    return bool((m and int(m.group(1)) in CIFAR_RESNET_DEPTHS) or _WRN.match(name) or _RESNEXT.match(name))


def check_model_name(name: str) -> None:
    """Raise ValueError naming the model and the known choices when `name` cannot be built (timm names: also
    when timm is not installed). Offline: only registries are read."""
    if is_timm_name(name):
        check_timm_name(name)
        return
    if isinstance(name, str) and (is_cifar_model(name) or name in _torchvision().torchvision_model_names()):
        return
    raise ValueError(
        f"unknown model {name!r}: expected a CIFAR model (resnet{{{','.join(map(str, CIFAR_RESNET_DEPTHS))}}}, "
        "wrn_<depth>_<k>, resnext29_<C>x<W>d), a torchvision classification model name "
        "(torchvision.models.list_models()) or timm/<arch>[.<tag>] (with feed-fast[timm])"
    )


def check_weights(name: str, weights: str | None) -> None:
    """Raise ValueError when `weights` is not a weights spec model `name` can be built with (see the module
    docstring); None (no weights) always passes. Offline: nothing is downloaded."""
    check_model_name(name)
    if weights is None:
        return
    if not isinstance(weights, str) or not weights:
        raise ValueError(f"weights for model {name!r} must be a non-empty string, got {weights!r}")
    if is_timm_name(name):
        check_timm_weights(name, weights)
        return
    if is_cifar_model(name):
        raise ValueError(f"weights={weights!r}: CIFAR model {name!r} has no torchvision weights; "
                         "give a checkpoint instead")
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    try:
        enum.verify(weights)  # the rule torchvision's builders apply to a weights string
    except (KeyError, ValueError, TypeError):
        choices = ", ".join(f"{enum.__name__}.{w.name}" for w in enum) or "none"
        raise ValueError(f"weights={weights!r} is not a torchvision weights name for model {name!r}; "
                         f"choices: {choices} (or DEFAULT)") from None


def build_model(name: str, num_classes: int, *, weights: str | None = None,
                feature_node: str | None = None, **kw) -> nn.Module:
    """Build a model by name (see the module docstring). `weights` (see `check_weights`) download on first use
    (timm: unless HF_HUB_OFFLINE=1); tests never download. `kw` go to the model's constructor
    (timm.create_model for timm names)."""
    check_weights(name, weights)
    if is_timm_name(name):
        if feature_node is not None:
            raise ValueError(f"feature_node={feature_node!r}: timm model {name!r} taps timm's forward_features; "
                             "feature_node is for torchvision models")
        return TimmFeatureModel(name, num_classes, weights=weights, **kw)
    if is_cifar_model(name):
        if m := _RESNET.match(name):
            return CifarResNet(int(m.group(1)), num_classes, **kw)
        if m := _WRN.match(name):
            return WideResNet(int(m.group(1)), int(m.group(2)), num_classes, **kw)
        m = _RESNEXT.match(name)
        return CifarResNeXt(int(m.group(1)), int(m.group(2)), int(m.group(3)), num_classes, **kw)
    return _torchvision().TorchvisionFeatureModel(name, num_classes, weights=weights, feature_node=feature_node,
                                                  **kw)


def _torchvision():
    """torchvision_models, imported on first use: torchvision's import takes torch._dynamo with it (about 2.5 s
    of a 7 s start on 2 cores), which a run of CIFAR or timm models never needs."""
    from . import torchvision_models

    return torchvision_models


def __getattr__(name: str):
    if name == "TorchvisionFeatureModel":
        return _torchvision().TorchvisionFeatureModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "CifarResNeXt",
    "CifarResNet",
    "TimmFeatureModel",
    "TorchvisionFeatureModel",
    "WideResNet",
    "build_model",
    "check_model_name",
    "check_weights",
    "count_parameters",
    "is_cifar_model",
]

"""Models by name. `build_model(name, num_classes, **kw)` returns an nn.Module with:

- `forward(x) -> logits`
- `forward_features(x) -> (feature, logits)`: the feature tap (last stage, after its activation, before
  pooling) and the logits from one forward
- `extract_features(x) -> feature`: the tap alone, the classifier head is not computed
- `feature_channels`: channels of the tap
- `plain_module()`: the module whose state dict is the student export (torchvision's own model for ImageNet
  names, so an export loads into `torchvision.models.get_model(name, num_classes=...)`)

CIFAR names: resnet{8,14,20,32,44,56,110} (6n+2), wrn_{depth}_{k} (e.g. wrn_28_10, wrn_16_2),
resnext29_{C}x{W}d (resnext29_8x64d, resnext29_16x64d). Anything else is looked up in torchvision
(resnet18, resnet34, resnet50, ...). Test-sized CIFAR ResNets: `widths=(4, 8, 16)`.
"""
from __future__ import annotations

import re

from torch import nn

from .cifar import CifarResNet, CifarResNeXt, WideResNet
from .torchvision_models import TorchvisionFeatureModel, torchvision_model_names

_RESNET = re.compile(r"^resnet(\d+)$")
_WRN = re.compile(r"^wrn_(\d+)_(\d+)$")
_RESNEXT = re.compile(r"^resnext(\d+)_(\d+)x(\d+)d$")
CIFAR_RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def is_cifar_model(name: str) -> bool:
    m = _RESNET.match(name)
    return bool((m and int(m.group(1)) in CIFAR_RESNET_DEPTHS) or _WRN.match(name) or _RESNEXT.match(name))


def check_model_name(name: str) -> None:
    """Raise ValueError naming the model and the known choices when `name` cannot be built."""
    if isinstance(name, str) and (is_cifar_model(name) or name in torchvision_model_names()):
        return
    raise ValueError(
        f"unknown model {name!r}: expected a CIFAR model (resnet{{{','.join(map(str, CIFAR_RESNET_DEPTHS))}}}, "
        "wrn_<depth>_<k>, resnext29_<C>x<W>d) or a torchvision classification model name "
        "(torchvision.models.list_models())"
    )


def build_model(name: str, num_classes: int, *, weights: str | None = None,
                feature_node: str | None = None, **kw) -> nn.Module:
    """Build a model by name (see the module docstring). `weights` (torchvision weights name such as
    "ResNet34_Weights.IMAGENET1K_V1") downloads on first use; tests never pass it."""
    check_model_name(name)
    if is_cifar_model(name):
        if weights:
            raise ValueError(f"weights={weights!r}: CIFAR model {name!r} has no torchvision weights; "
                             "give a checkpoint instead")
        if m := _RESNET.match(name):
            return CifarResNet(int(m.group(1)), num_classes, **kw)
        if m := _WRN.match(name):
            return WideResNet(int(m.group(1)), int(m.group(2)), num_classes, **kw)
        m = _RESNEXT.match(name)
        return CifarResNeXt(int(m.group(1)), int(m.group(2)), int(m.group(3)), num_classes, **kw)
    return TorchvisionFeatureModel(name, num_classes, weights=weights, feature_node=feature_node, **kw)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "CifarResNeXt",
    "CifarResNet",
    "TorchvisionFeatureModel",
    "WideResNet",
    "build_model",
    "check_model_name",
    "count_parameters",
    "is_cifar_model",
]

"""SGD with weight decay on the student and the translators, and per-iteration schedules (linear warmup, then
multistep or cosine), stepped every iteration so a resumed run continues the exact lr curve.

torchvision's recipe switches on the optimizer (docs/recipe.md): `optim.norm_weight_decay` and
`optim.bias_weight_decay` split the parameters into param groups exactly as torchvision's
`utils.set_weight_decay` does (`param_groups`), and `optim.clip_grad_norm` clips the gradients' total norm before
each update (`GradientClip`), on the device, with no host read."""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..config import OptimConfig, ScheduleConfig


def apex_fused_sgd():
    try:
        from apex.optimizers import FusedSGD
    except (ImportError, OSError):  # apex missing, or its CUDA extensions fail to load
        return None
    return FusedSGD


# torchvision's utils.set_weight_decay default `norm_classes`: what `optim.norm_weight_decay` applies to
NORM_CLASSES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                nn.LocalResponseNorm)


def param_groups(module: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The trainable parameters of `module` (the student and the translators) as param groups. Without
    norm_weight_decay and bias_weight_decay: one group, in `module.parameters()` order (optim.weight_decay).
    With either, torchvision's `set_weight_decay` rule, module by module in `modules()` order: a parameter named
    `bias` goes to the bias group when bias_weight_decay is set, else a parameter of a norm layer (NORM_CLASSES)
    to the norm group when norm_weight_decay is set, else to the others'; non-empty groups in the order
    others, norm, bias, each with its weight decay."""
    if cfg.norm_weight_decay is None and cfg.bias_weight_decay is None:
        return [{"params": [p for p in module.parameters() if p.requires_grad]}]
    groups: dict[str, list[nn.Parameter]] = {"other": [], "norm": [], "bias": []}
    seen: set[int] = set()
    for owner in module.modules():
        for name, p in owner.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if cfg.bias_weight_decay is not None and name == "bias":
                groups["bias"].append(p)
            elif cfg.norm_weight_decay is not None and isinstance(owner, NORM_CLASSES):
                groups["norm"].append(p)
            else:
                groups["other"].append(p)
    decay = {"other": cfg.weight_decay, "norm": cfg.norm_weight_decay, "bias": cfg.bias_weight_decay}
    return [{"params": params, "weight_decay": decay[key]} for key, params in groups.items() if params]


class GradientClip:
    """torchvision's --clip-grad-norm: `clip_grad_norm_` over every parameter the optimizer updates (read from
    its param groups at each call, so a resume's `load_state_dict` changes nothing), foreach, with
    error_if_nonfinite off: the total norm and the scale factor stay on the device, nothing is read on the host,
    so it runs inside `train.compile=step` and its CUDA graph. Returns the total norm before clipping."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        self.optimizer, self.max_norm = optimizer, float(max_norm)

    def __call__(self) -> Tensor:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True)


def build_optimizer(module: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """apex's FusedSGD when `optim.apex` asks for it and apex imports; else torch's fused SGD on CUDA and the
    foreach implementation on the CPU. Param groups: `param_groups`."""
    params = param_groups(module, cfg)
    kw = {"lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov, "weight_decay": cfg.weight_decay}
    if cfg.apex and device.type == "cuda":
        fused_sgd = apex_fused_sgd()
        if fused_sgd is not None:
            return fused_sgd(params, **kw)
        warnings.warn("optim.apex=true but apex.optimizers.FusedSGD is not importable; using torch's fused SGD")
    if device.type == "cuda":
        return torch.optim.SGD(params, fused=True, **kw)
    return torch.optim.SGD(params, foreach=True, **kw)


def lr_factor(step: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base lr at global iteration `step` (0-based)."""
    epoch = step / steps_per_epoch
    warmup = cfg.warmup_epochs
    if warmup > 0 and epoch < warmup:
        return (step + 1) / (warmup * steps_per_epoch)
    if cfg.name == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if int(epoch) >= m)
    if cfg.name == "cosine":
        span = max(cfg.epochs - warmup, 1e-9)
        progress = min(max((epoch - warmup) / span, 0.0), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, cfg: ScheduleConfig, base_lr: float):
    min_factor = cfg.min_lr / base_lr

    def factor(step: int) -> float:
        return max(lr_factor(step, steps_per_epoch, cfg), min_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

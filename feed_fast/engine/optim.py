"""SGD with weight decay on the student and the translators, and per-iteration schedules (linear warmup, then
multistep or cosine), stepped every iteration so a resumed run continues the exact lr curve."""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import OptimConfig, ScheduleConfig


def apex_fused_sgd():
    try:
        from apex.optimizers import FusedSGD
    except (ImportError, OSError):  # apex missing, or its CUDA extensions fail to load
        return None
    return FusedSGD


def build_optimizer(module: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """apex's FusedSGD when `optim.apex` asks for it and apex imports; else torch's fused SGD on CUDA and the
    foreach implementation on the CPU."""
    params = [p for p in module.parameters() if p.requires_grad]
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

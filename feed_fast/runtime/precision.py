"""Mixed precision: autocast bf16 by default on CUDA where supported, fp16 with a GradScaler as an option,
fp32 on the CPU (autocast off, the scaler a no-op), so one step function serves every device."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # what `train.precision` and `--precision` take


@dataclass(frozen=True)
class Precision:
    name: str  # bf16 | fp16 | fp32
    dtype: torch.dtype | None
    device_type: str

    def autocast(self, cache_enabled: bool = True):
        """`cache_enabled=False` for work captured in a CUDA graph (autocast's weight-cast cache must not outlive
        the capture; PyTorch's CUDA-graph notes ask for it)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache_enabled)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """`auto`: bf16 on CUDA where the GPU supports it (else fp16), fp32 on the CPU."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "auto":
        if device.type == "cuda":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            requested = "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device (it trains with a GradScaler); use bf16 or fp32 on the CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[requested]
    return Precision(requested, dtype, device.type)

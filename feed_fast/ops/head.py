"""The translator head's precision policy, and its conv as torch runs it. One home for both: the reference, the
hybrid plan (cuDNN) and the fused kernels (through `gemm_dtype`) all follow the rules written here.

The rules, decided once per `feed_loss` call from the tensors and the caller's torch settings:
- GEMM operand dtype (`gemm_dtype`): under `torch.autocast` the autocast dtype, exactly as autocast casts a
  conv's input and weight (float64 is left alone, as autocast leaves it); otherwise the dtype input and weight
  share, or float32 when they differ, so mixed-dtype products stay exact in the float32 accumulator.
  Products and sums are float32 whatever the operand dtype (float64 when a test asks for it).
- TF32: float32 GEMMs run as IEEE fp32 unless the user opted in the PyTorch way. The fused kernels follow
  `torch.backends.cuda.matmul.allow_tf32` (`matmul_allows_tf32`); the hybrid plan's cuDNN conv follows
  `torch.backends.cudnn.allow_tf32` by itself (PyTorch's default there is True). Both are read at call time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype when autocast is on for `device_type`, else None."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def gemm_dtype(head_input_dtype: torch.dtype, weight_dtype: torch.dtype, autocast: torch.dtype | None) -> torch.dtype:
    """The dtype the head conv's operands are rounded to (see the module docstring)."""
    if autocast is not None and torch.float64 not in (head_input_dtype, weight_dtype):
        return autocast
    if head_input_dtype == weight_dtype:
        return head_input_dtype
    return torch.float64 if torch.float64 in (head_input_dtype, weight_dtype) else torch.float32


def gemm_dtypes(head_inputs, weights, autocast: torch.dtype | None) -> tuple[torch.dtype, ...]:
    """Each head's GEMM operand dtype (`gemm_dtype`); a teacher without a conv has no GEMM and keeps its head
    input's dtype (the dtype its dL/dz is written in)."""
    return tuple(h.dtype if w is None else gemm_dtype(h.dtype, w.dtype, autocast) for h, w in zip(head_inputs, weights))


def matmul_allows_tf32() -> bool:
    """torch.backends.cuda.matmul.allow_tf32, or its newer spelling `fp32_precision == "tf32"` (torch refuses
    the legacy read once a program has set the new flag)."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:
        precision = torch.backends.cuda.matmul.fp32_precision
        if precision == "none":  # inherits the global setting
            precision = torch.backends.fp32_precision
        return precision == "tf32"


def head_conv(head_input: Tensor, weight: Tensor, gemm: torch.dtype, result_dtype: torch.dtype) -> Tensor:
    """conv(h; W), stride 1, 'same' padding, no bias: operands rounded to `gemm`, then convolved in
    `result_dtype` (the reference passes float32/float64, exact products as the kernels compute them; the
    hybrid plan passes `gemm` itself, so cuDNN runs bf16/fp16 tensor cores and returns the conv in that dtype).
    Autocast is switched off here: the rule above is the only one that applies."""
    with torch.autocast(head_input.device.type, enabled=False):
        h = head_input.to(gemm).to(result_dtype)
        w = weight.to(gemm).to(result_dtype)
        return F.conv2d(h, w, None, padding=weight.shape[-1] // 2)

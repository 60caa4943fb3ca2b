"""The FEED loss in plain PyTorch: the readable math, the CPU path and the ground truth the fused kernels are
tested against. docs/method.md has the formulas.

`feed_terms_reference` returns the same (K, B) intermediate as the fused op: row k is `row_scales[k]` times
the per-sample L1 sums sum_i |u_i - v_i|. The scales (beta and the reduction) are decided by
`feed_fast.ops.functional`; the head's precision policy lives in `feed_fast.ops.head`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .head import gemm_dtype, head_conv
from .numerics import NORM_SCALE_FLOOR
from .validation import FEEDInputs


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32 arithmetic whatever the input dtype; float64 only when a caller (a test) asks for it."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def head_output(
    head_input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    negative_slope: float | None,
    autocast: torch.dtype | None = None,
) -> Tensor:
    """y = act(conv(h; W) + c), the output of a translator's last conv, in float32 (float64 for tests). The conv's
    operands are rounded to the policy's GEMM dtype first, so this is the kernels' arithmetic exactly."""
    dtype = compute_dtype(head_input, weight, bias)
    if weight is None:
        y = head_input.to(dtype)
    else:
        y = head_conv(head_input, weight, gemm_dtype(head_input.dtype, weight.dtype, autocast), dtype)
    if bias is not None:
        y = y + bias.to(dtype).view(1, -1, 1, 1)
    if negative_slope is not None:
        y = F.leaky_relu(y, negative_slope)
    return y


def l2_normalize(x: Tensor, eps: float) -> Tensor:
    """x / max(||x||, eps) per row, as F.normalize, but the norm is taken of x / max|x| and scaled back, so
    large features (|x| > ~1e19 in float32) do not overflow the sum of squares into a silently wrong loss.
    The scale is a constant for autograd: the gradient is exactly that of the plain norm."""
    scale = x.detach().abs().amax(dim=1, keepdim=True).clamp_min(NORM_SCALE_FLOOR)
    norm = scale * torch.linalg.vector_norm(x / scale, dim=1, keepdim=True)
    return x / norm.clamp_min(eps)


def l1_of_normalized(y: Tensor, teacher: Tensor, eps: float) -> Tensor:
    """Per-sample sum_i |y/max(||y||, eps) - t/max(||t||, eps)| over the flattened C*H*W. (B,)"""
    u = l2_normalize(y.flatten(1), eps)
    v = l2_normalize(teacher.detach().to(y.dtype).flatten(1), eps)
    return (u - v).abs().sum(dim=1)


def feed_terms_reference(
    inputs: FEEDInputs,
    row_scales: Sequence[float],
    *,
    eps: float,
    negative_slope: float | None,
    autocast: torch.dtype | None = None,
) -> Tensor:
    """(K, B): row_scales[k] * per-sample L1 sums, differentiable through autograd. Teachers get no gradient."""
    rows = []
    for h, t, w, b, scale in zip(inputs.head_inputs, inputs.teachers, inputs.weights, inputs.biases, row_scales):
        y = head_output(h, w, b, negative_slope, autocast)
        with torch.autocast(y.device.type, enabled=False):  # norms and L1 in y's dtype, whatever the caller runs
            rows.append(scale * l1_of_normalized(y, t, eps))
    return torch.stack(rows)

"""The FEED loss in plain PyTorch: the readable reference, the CPU path and the ground truth the fused
kernels are tested against. See ../shared/FEED.md for the math.

Both backends produce the same intermediate, `terms`: a (K, B) float32 tensor of per-sample L1 sums
sum_i |u_i - v_i|. `reduce_terms` is the one place that turns it into the requested reduction.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .validation import FEEDInputs


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32 arithmetic whatever the input dtype; float64 only when a caller (a test) asks for it."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def translator_output(
    student: Tensor, weight: Tensor | None, bias: Tensor | None, negative_slope: float | None
) -> Tensor:
    """y = act(conv(h; W) + c), the output of a translator's last conv, in float32 (float64 for tests)."""
    dtype = compute_dtype(student, weight, bias)
    y = student.to(dtype)
    if weight is not None:
        y = F.conv2d(y, weight.to(dtype), None, padding=weight.shape[-1] // 2)
    if bias is not None:
        y = y + bias.to(dtype).view(1, -1, 1, 1)
    if negative_slope is not None:
        y = F.leaky_relu(y, negative_slope)
    return y


NORM_SCALE_FLOOR = 1e-30  # the kernels start their running scale here too


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


def feed_terms_reference(inputs: FEEDInputs, *, eps: float, negative_slope: float | None) -> Tensor:
    """(K, B) per-sample L1 sums, differentiable through autograd. The teachers get no gradient."""
    rows = []
    for s, t, w, b in zip(inputs.students, inputs.teachers, inputs.weights, inputs.biases):
        y = translator_output(s, w, b, negative_slope)
        rows.append(l1_of_normalized(y, t, eps))
    return torch.stack(rows)


def reduce_terms(terms: Tensor, numels: Sequence[int], beta: float, reduction: str) -> Tensor:
    """(K, B) L1 sums -> beta * (per-sample means | sum over k of batch means | total sum)."""
    if reduction == "sum":
        return beta * terms.sum()
    n = torch.tensor(numels, dtype=terms.dtype, device=terms.device).view(-1, 1)
    per_sample = terms / n
    if reduction == "none":
        return beta * per_sample
    return beta * per_sample.mean(dim=1).sum()

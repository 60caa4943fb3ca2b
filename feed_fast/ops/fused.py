"""The fused FEED op, registered with `torch.library` so that `torch.compile(fullgraph=True)` sees one node
(`feed_fast::feed_terms`, its backward `feed_fast::feed_terms_backward`) and a CUDA graph can hold it: no host
sync and no tensor built from Python values per call. The kernels and their launch plans are in
`feed_fast.kernels.feed_loss`; this module only ties forward to backward.

Both ops return what `reference.feed_terms_reference` returns: (K, B) float32, row k scaled by `row_scales[k]`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..kernels import feed_loss as kernels
from .head import gemm_dtypes
from .validation import FEEDInputs


def _per_teacher(present: list[Tensor], has: list[bool]) -> list[Tensor | None]:
    """[tensors of the teachers that have one] + mask -> one entry per teacher, None where absent."""
    found = iter(present)
    return [next(found) if flag else None for flag in has]


# Schema notes: weights and biases travel as lists of the present tensors plus a per-teacher mask, because
# torch.library differentiates only through plain tensor lists (a "Tensor?[]" would get no gradient). The
# autocast dtype and the TF32 flag are read by the caller at call time and passed in: the op itself is pure.
@torch.library.custom_op("feed_fast::feed_terms", mutates_args=())
def feed_terms(
    head_inputs: list[Tensor],
    teachers: list[Tensor],
    weights: list[Tensor],
    biases: list[Tensor],
    has_weight: list[bool],
    has_bias: list[bool],
    row_scales: list[float],
    negative_slope: Optional[float],  # noqa: UP045 -- torch.library's schema inference reads typing.Optional
    eps: float,
    autocast: Optional[torch.dtype],  # noqa: UP045
    tf32: bool,
) -> tuple[Tensor, Tensor]:
    """-> (terms (K, B) fp32, stats (K, B, 3) fp32: the per-sample scalars the backward needs)."""
    weights, biases = _per_teacher(weights, has_weight), _per_teacher(biases, has_bias)
    dots = gemm_dtypes(head_inputs, weights, autocast)
    return kernels.feed_forward(head_inputs, teachers, weights, biases, row_scales, dots, tf32, negative_slope, eps)


@feed_terms.register_fake
def _feed_terms_fake(head_inputs, teachers, *_):
    shape = (len(teachers), teachers[0].shape[0])
    return (teachers[0].new_empty(shape, dtype=torch.float32),
            teachers[0].new_empty((*shape, kernels.STATS), dtype=torch.float32))


@torch.library.custom_op("feed_fast::feed_terms_backward", mutates_args=())
def feed_terms_backward(
    grad_terms: Tensor,
    stats: Tensor,
    head_inputs: list[Tensor],
    teachers: list[Tensor],
    weights: list[Tensor],
    biases: list[Tensor],
    has_weight: list[bool],
    has_bias: list[bool],
    row_scales: list[float],
    negative_slope: Optional[float],  # noqa: UP045
    eps: float,
    autocast: Optional[torch.dtype],  # noqa: UP045
    tf32: bool,
) -> list[Tensor]:
    """-> the gradients of every head input, then of each present weight, then of each present bias, each in
    its tensor's dtype and memory format."""
    weights, biases = _per_teacher(weights, has_weight), _per_teacher(biases, has_bias)
    dots = gemm_dtypes(head_inputs, weights, autocast)
    grad_h, grad_w, grad_b = kernels.feed_backward(
        grad_terms, stats, head_inputs, teachers, weights, biases, row_scales, dots, tf32, negative_slope, eps
    )
    return [*grad_h, *(g for g in grad_w if g is not None), *(g for g in grad_b if g is not None)]


@feed_terms_backward.register_fake
def _feed_terms_backward_fake(grad_terms, stats, head_inputs, teachers, weights, biases, *_):
    return [torch.empty_like(x) for x in (*head_inputs, *weights, *biases)]


def _setup_context(ctx, inputs, output) -> None:
    head_inputs, teachers, weights, biases, *options = inputs
    ctx.counts = (len(head_inputs), len(weights), len(biases))
    ctx.options = options
    ctx.save_for_backward(output[1], *head_inputs, *teachers, *weights, *biases)


def _backward(ctx, grad_terms: Tensor, _grad_stats):
    num, num_w, _ = ctx.counts
    stats, *saved = ctx.saved_tensors
    head_inputs, teachers = saved[:num], saved[num : 2 * num]
    weights, biases = saved[2 * num : 2 * num + num_w], saved[2 * num + num_w :]
    grads = feed_terms_backward(grad_terms, stats, head_inputs, teachers, weights, biases, *ctx.options)
    grad_h, grad_w, grad_b = grads[:num], grads[num : num + num_w], grads[num + num_w :]
    # Teachers are constants: they never receive a gradient.
    return grad_h, [None] * num, grad_w, grad_b, None, None, None, None, None, None, None


feed_terms.register_autograd(_backward, setup_context=_setup_context)


def fused_feed_terms(
    inputs: FEEDInputs,
    row_scales,
    *,
    eps: float,
    negative_slope: float | None,
    autocast: torch.dtype | None,
    tf32: bool,
) -> Tensor:
    """(K, B) float32: row_scales[k] * per-sample L1 sums, through the fused kernels."""
    terms, _ = feed_terms(
        list(inputs.head_inputs), list(inputs.teachers),
        [w for w in inputs.weights if w is not None], [b for b in inputs.biases if b is not None],
        [w is not None for w in inputs.weights], [b is not None for b in inputs.biases],
        [float(s) for s in row_scales], None if negative_slope is None else float(negative_slope), float(eps),
        autocast, bool(tf32),
    )
    return terms

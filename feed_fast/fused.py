"""The fused FEED op as a torch.autograd.Function over the Triton kernels in feed_fast.kernels.feed_loss.

It returns the same (K, B) per-sample L1 sums as `reference.feed_terms_reference`; `functional.feed_loss`
applies beta and the reduction to either, so the two backends share everything but the kernels.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .kernels import feed_loss as kernels
from .validation import FEEDInputs


class FusedFEEDTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, num_teachers: int, kernel_sizes: tuple, negative_slope, eps: float, *tensors):
        k = num_teachers
        students, teachers = tensors[:k], tensors[k : 2 * k]
        weights, biases = tensors[2 * k : 3 * k], tensors[3 * k :]
        # Teachers are constants: detach so no graph or gradient ever reaches them.
        teachers = tuple(t.detach() for t in teachers)
        terms, stats = kernels.feed_forward(students, teachers, weights, biases, kernel_sizes, negative_slope, eps)
        ctx.meta = (k, kernel_sizes, negative_slope, eps)
        ctx.absent = tuple(x is None for x in tensors)
        ctx.save_for_backward(stats, *(x for x in tensors[:k] + teachers + weights + biases if x is not None))
        return terms

    @staticmethod
    def backward(ctx, grad_terms: Tensor):
        k, kernel_sizes, negative_slope, eps = ctx.meta
        stats, *present = ctx.saved_tensors
        it = iter(present)
        tensors = [None if absent else next(it) for absent in ctx.absent]
        students, teachers = tensors[:k], tensors[k : 2 * k]
        weights, biases = tensors[2 * k : 3 * k], tensors[3 * k :]
        grad_s, grad_w, grad_b = kernels.feed_backward(
            grad_terms, stats, students, teachers, weights, biases, kernel_sizes, negative_slope, eps
        )
        grad_w = tuple(g.to(w.dtype) if g is not None else None for g, w in zip(grad_w, weights))
        grad_b = tuple(g.to(b.dtype) if g is not None else None for g, b in zip(grad_b, biases))
        needs = ctx.needs_input_grad[4:]
        grads = [g if need else None for g, need in zip((*grad_s, *(None,) * k, *grad_w, *grad_b), needs)]
        return (None, None, None, None, *grads)


def fused_feed_terms(inputs: FEEDInputs, *, eps: float, negative_slope: float | None) -> Tensor:
    """(K, B) float32 per-sample L1 sums through the fused kernels."""
    return FusedFEEDTerms.apply(
        inputs.num_teachers,
        inputs.kernel_sizes,
        negative_slope,
        float(eps),
        *inputs.students,
        *inputs.teachers,
        *inputs.weights,
        *inputs.biases,
    )

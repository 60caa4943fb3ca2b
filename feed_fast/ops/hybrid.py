"""The hybrid plan: cuDNN keeps each head's conv, the fused kernels do everything around it.

Forward: one cuDNN conv per head in the GEMM dtype (`head.gemm_dtype`; bf16/fp16 tensor cores, or fp32
following `torch.backends.cudnn.allow_tf32`), then one fused launch for bias + LeakyReLU + both norms + L1 over
all K teachers. Backward: one fused launch writes dL/d(conv output) straight into the conv output's gradient
(its dtype and layout: no fp32 copy of a bf16 map) with per-sample bias partials, one launch reduces the bias
gradients, and cuDNN's convolution backward gives the input and weight gradients through autograd.
Saved for backward: the conv output in its own dtype, and what the conv itself saves.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .fused import fused_feed_terms
from .head import gemm_dtypes, head_conv
from .validation import FEEDInputs


def hybrid_feed_terms(
    inputs: FEEDInputs,
    row_scales: Sequence[float],
    *,
    eps: float,
    negative_slope: float | None,
    autocast: torch.dtype | None,
    tf32: bool,
) -> Tensor:
    """(K, B) float32: row_scales[k] * per-sample L1 sums, with the head convs run by cuDNN."""
    dtypes = gemm_dtypes(inputs.head_inputs, inputs.weights, autocast)
    conv_outputs = [h if w is None else head_conv(h, w, d, d)
                    for h, w, d in zip(inputs.head_inputs, inputs.weights, dtypes)]
    num = inputs.num_teachers
    rest = FEEDInputs(tuple(conv_outputs), inputs.teachers, (None,) * num, inputs.biases, (0,) * num)
    return fused_feed_terms(rest, row_scales, eps=eps, negative_slope=negative_slope, autocast=None, tf32=tf32)

"""`feed_loss`: the public FEED loss op. Validates, reads the caller's precision settings, picks a backend,
and owns the reduction (beta and mean/sum/none).

The reduction is folded into per-teacher Python-float row scales that every backend applies to its (K, B)
per-sample L1 sums (the fused kernels multiply inside the kernel), so a reduction costs at most one `sum` and
never a tensor built from Python values on the device.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from .backend_choice import resolve_backend
from .head import autocast_dtype, gemm_dtypes, matmul_allows_tf32
from .numerics import DEFAULT_EPS
from .reference import feed_terms_reference
from .validation import FEEDInputs, TensorOrList, check_options, validate_inputs


def row_scales(inputs: FEEDInputs, beta: float, reduction: str) -> tuple[float, ...]:
    """Per-teacher factors on the per-sample L1 sums sum_i |u_i - v_i|, N_k = C_t*H*W, B the batch:
    "none" -> beta / N_k (rows of beta * l_kb); "mean" -> beta / (N_k * B) (their sum is beta * sum_k mean_b l_kb);
    "sum" -> beta (their sum is beta * sum |u - v|)."""
    if reduction == "sum":
        return tuple(float(beta) for _ in inputs.teachers)
    per_row = 1 if reduction == "none" else inputs.batch_size
    return tuple(float(beta) / (n * per_row) for n in inputs.numels())


def reduce_rows(terms: Tensor, reduction: str) -> Tensor:
    """(K, B) scaled terms -> the requested reduction (the scales already hold beta, 1/N_k and 1/B)."""
    return terms if reduction == "none" else terms.sum()


def _backends():
    """name -> (K, B) scaled terms. The fused modules need triton: imported only when chosen."""
    from .fused import fused_feed_terms
    from .hybrid import hybrid_feed_terms

    return {"triton": fused_feed_terms, "hybrid": hybrid_feed_terms}


def _head_inputs_argument(head_inputs, students):
    if students is None:
        return head_inputs
    if head_inputs is not None:
        raise TypeError("feed_loss got both head_inputs and students (its deprecated name); pass head_inputs only")
    warnings.warn(
        "feed_loss(students=...) is deprecated and will be removed in the next release: the argument is the "
        "translator heads' inputs, now called head_inputs",
        DeprecationWarning,
        stacklevel=3,
    )
    return students


def feed_loss(
    head_inputs: TensorOrList | None = None,
    teachers: TensorOrList | None = None,
    weights: TensorOrList | None = None,
    biases: TensorOrList | None = None,
    *,
    beta: float = 1.0,
    eps: float = DEFAULT_EPS,
    negative_slope: float | None = None,
    reduction: str = "mean",
    backend: str = "auto",
    students: Sequence[Tensor] | Tensor | None = None,
) -> Tensor:
    """FEED / factor-transfer loss of K translator heads against K teacher feature maps (docs/method.md).

    head_inputs[k] is the input of translator k's last conv (its head): (B, C_in_k, H_k, W_k). For teacher k
    and sample b: y = act(conv(head_inputs[k][b]; weights[k]) + biases[k]), u = y / max(||y||, eps),
    v = t / max(||t||, eps) over the flattened C*H*W, l = mean_i |u_i - v_i|.
    reduction "none" -> (K, B) of beta * l; "mean" -> beta * sum_k mean_b l; "sum" -> beta * sum |u - v|.
    Teachers never receive gradient. Returns float32 (float64 only for float64 inputs, torch backend).

    backend: "torch" (eager reference, any device), "triton" (fully fused head + loss kernels), "hybrid"
    (cuDNN head conv, fused bias/activation/normalisation/L1), "auto" (torch off CUDA; on CUDA whichever of
    triton and hybrid `backend_choice.choose_fused_plan` models as faster for these shapes). Precision rules
    (autocast, TF32) are in `feed_fast.ops.head`. `students=` is the deprecated name of head_inputs.

    Memory format: pass channels-last feature maps (`x.to(memory_format=torch.channels_last)`). The fused
    backends read channels innermost with 16-byte loads; NCHW maps give the same result through scalar loads,
    much slower on a GPU (docs/ops.md, "Memory format").
    """
    head_inputs = _head_inputs_argument(head_inputs, students)
    check_options(beta, eps, negative_slope, reduction, backend)
    inputs = validate_inputs(head_inputs, teachers, weights, biases, allow_float64=True)
    device_type = inputs.teachers[0].device.type
    autocast = autocast_dtype(device_type)
    tf32 = matmul_allows_tf32()
    dtypes = gemm_dtypes(inputs.head_inputs, inputs.weights, autocast)
    chosen = resolve_backend(backend, inputs, dtypes, tf32, torch.backends.cudnn.allow_tf32)
    scales = row_scales(inputs, beta, reduction)
    if chosen == "torch":
        terms = feed_terms_reference(inputs, scales, eps=eps, negative_slope=negative_slope, autocast=autocast)
    else:
        terms = _backends()[chosen](inputs, scales, eps=eps, negative_slope=negative_slope, autocast=autocast,
                                    tf32=tf32)
    return reduce_rows(terms, reduction)

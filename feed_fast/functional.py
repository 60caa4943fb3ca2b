"""`feed_loss`: the public FEED loss op. Validates, picks a backend, reduces."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import feed_terms_reference, reduce_terms
from .validation import FEEDInputs, TensorOrList, check_options, validate_inputs


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 -- ImportError, or a broken install raising anything at import
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend in ("triton", "hybrid"):
        if not triton_available():
            raise RuntimeError(f"backend={backend!r} needs the triton package (pip install triton); use backend='torch'")
        if device.type != "cuda" and not interpreter_enabled():
            raise ValueError(
                f"backend={backend!r} needs CUDA tensors (got {device}) or TRITON_INTERPRET=1 set before "
                "feed_fast is imported; use backend='torch' on the CPU"
            )
    return backend


def reject_float64(inputs: FEEDInputs) -> None:
    """The kernels take float32/float16/bfloat16; float64 is a reference-only (test) dtype."""
    for name in ("students", "teachers", "weights", "biases"):
        for k, x in enumerate(getattr(inputs, name)):
            if x is not None and x.dtype == torch.float64:
                raise TypeError(
                    f"{name}[{k}] is float64; backend='triton' takes float32, float16 or bfloat16 "
                    "(use backend='torch' for float64)"
                )


def with_heads_run_by_torch(inputs: FEEDInputs) -> FEEDInputs:
    """The "hybrid" backend: cuDNN runs each head's conv (fast where a Triton implicit GEMM is not), then the
    fused kernels add bias and activation and compute the normalisation and L1 without writing u or v."""
    students = []
    for s, w in zip(inputs.students, inputs.weights):
        if w is not None:
            dtype = s.dtype if w.dtype == s.dtype else torch.float32  # float32 arithmetic for mixed dtypes
            s = F.conv2d(s.to(dtype), w.to(dtype), None, padding=w.shape[-1] // 2)
        students.append(s)
    num = inputs.num_teachers
    return FEEDInputs(tuple(students), inputs.teachers, (None,) * num, inputs.biases, (0,) * num)


def feed_loss(
    students: TensorOrList,
    teachers: TensorOrList,
    weights: TensorOrList | None = None,
    biases: TensorOrList | None = None,
    *,
    beta: float = 1.0,
    eps: float = 1e-12,
    negative_slope: float | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """FEED / factor-transfer loss of K translator heads against K teacher feature maps.

    For teacher k and sample b: y = act(conv(students[k][b]; weights[k]) + biases[k]),
    u = y / max(||y||, eps), v = t / max(||t||, eps) over the flattened C*H*W, l = mean_i |u_i - v_i|.
    reduction "none" -> (K, B) of beta * l; "mean" -> beta * sum_k mean_b l; "sum" -> beta * sum |u - v|.
    Teachers never receive gradient. Returns float32 (float64 only for float64 inputs, torch backend).

    backend: "torch" (eager reference, any device), "triton" (fully fused head + loss kernels), "hybrid"
    (cuDNN head conv, fused bias/activation/normalisation/L1), "auto" (triton on CUDA, torch otherwise).
    """
    check_options(beta, eps, negative_slope, reduction, backend)
    inputs = validate_inputs(students, teachers, weights, biases, allow_float64=True)
    chosen = resolve_backend(backend, inputs.teachers[0].device)
    if chosen in ("triton", "hybrid"):
        reject_float64(inputs)
    if chosen == "hybrid":
        inputs = with_heads_run_by_torch(inputs)
        chosen = "triton"
    if chosen == "triton":
        from .fused import fused_feed_terms

        terms = fused_feed_terms(inputs, eps=eps, negative_slope=negative_slope)
    else:
        terms = feed_terms_reference(inputs, eps=eps, negative_slope=negative_slope)
    return reduce_terms(terms, inputs.numels(), beta, reduction)

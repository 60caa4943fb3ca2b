"""Which implementation runs a `feed_loss` call, decided per call from the shapes and dtypes.

- `torch`: the eager reference (`feed_fast.reference`); any device, any float dtype.
- `triton`: fully fused kernels, head conv included (`feed_fast.kernels.feed_loss`): 1 forward + 3 backward
  launches for all K teachers, nothing but per-sample scalars saved.
- `hybrid`: cuDNN runs the head conv (forward, input and weight gradients); the same fused kernels do bias,
  activation, both norms and the L1 (`feed_fast.hybrid`).
- `auto`: `torch` off CUDA (and for float64 or without triton); on CUDA, `choose_fused_plan` below.

`choose_fused_plan` is a cost model, not a measurement. Its constants describe an H100 SXM (dense tensor-core
rates, HBM3 and L2 bandwidth) and two guesses: how much of the peak each GEMM reaches and what one launch
costs on the host. They are the thresholds to replace once benchmarks/gpu_check.sh has measured both plans;
docs/ops.md tabulates what the model picks for the benchmark shapes and why.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .validation import FEEDInputs, first_float64, reject_float64

# ---- the model's constants (H100 SXM; replace with measured values) ---------------------------------------
PEAK_FLOPS = {torch.bfloat16: 989e12, torch.float16: 989e12, "tf32": 494e12, torch.float32: 67e12}
CUDNN_EFFICIENCY = 0.6  # share of the peak cuDNN's conv reaches at these sizes (guess)
FUSED_EFFICIENCY = 0.3  # share reached by the fused implicit GEMM: 64x64 tiles, one program per sample (guess)
DRAM_BYTES_PER_S = 3.0e12  # measured device copy on the lent H100 (docs: FIELD_NOTES)
L2_BYTES_PER_S = 7.0e12  # the fused kernels re-read each head's weight from L2 once per sample and pass
LAUNCH_SECONDS = 10e-6  # host time to issue one kernel or cuDNN call from Python (guess)


@dataclass(frozen=True)
class GPU:
    """An SM's resources, as the occupancy rules of the CUDA C++ Programming Guide (table "Technical
    Specifications per Compute Capability") count them."""

    sms: int
    registers_per_sm: int
    register_unit: int  # registers are allocated per warp, in units of this many
    max_registers_per_thread: int
    shared_bytes_per_sm: int  # what CTAs can be given in all
    shared_reserved_per_cta: int  # the driver's own share per resident CTA
    max_warps_per_sm: int
    max_ctas_per_sm: int


# H100 SXM (compute capability 9.0): 132 SMs (seen on the lent machine, FIELD_NOTES); 64K registers, 256-register
# warp allocation unit, 228 KB shared memory per SM of which 1 KB per CTA is reserved, 64 warps and 32 CTAs per SM
# (CUDA C++ Programming Guide, compute capability 9.0; the same figures as the CUDA occupancy calculator's).
H100 = GPU(sms=132, registers_per_sm=65536, register_unit=256, max_registers_per_thread=255,
           shared_bytes_per_sm=228 * 1024, shared_reserved_per_cta=1024, max_warps_per_sm=64, max_ctas_per_sm=32)


def ctas_per_sm(registers: int, shared_bytes: int, num_warps: int, gpu: GPU = H100) -> int:
    """How many CTAs of a compiled kernel one SM holds at once: the least of what its registers (per thread,
    as ptxas reports them), shared memory, warps and the CTA limit allow."""
    per_warp = -(-registers * 32 // gpu.register_unit) * gpu.register_unit
    by_registers = (gpu.registers_per_sm // per_warp) // num_warps if per_warp else gpu.max_ctas_per_sm
    by_shared = gpu.shared_bytes_per_sm // (shared_bytes + gpu.shared_reserved_per_cta)
    by_warps = gpu.max_warps_per_sm // num_warps
    return max(0, min(by_registers, by_shared, by_warps, gpu.max_ctas_per_sm))


@dataclass(frozen=True)
class HeadShape:
    """One teacher's head as the cost model sees it. kernel 0: no head conv (identity)."""

    batch: int
    c_in: int
    c_out: int
    height: int
    width: int
    kernel: int
    gemm_dtype: torch.dtype
    weight_bytes: int  # bytes per weight element as stored (fp32 master weights: 4)

    @property
    def conv_flops(self) -> float:
        return 2.0 * self.batch * self.c_out * self.c_in * self.kernel**2 * self.height * self.width

    @property
    def fits_one_tile(self) -> bool:
        """As the kernels tile it: at most 64 channels x 64 positions gives the one-pass forward."""
        return self.c_out <= 64 and self.height * self.width <= 64


def _gemm_rate(dtype: torch.dtype, tf32: bool) -> float:
    return PEAK_FLOPS["tf32"] if dtype == torch.float32 and tf32 else PEAK_FLOPS[dtype]


def plan_seconds(heads: Sequence[HeadShape], matmul_tf32: bool, cudnn_tf32: bool) -> dict[str, float]:
    """Modelled forward+backward seconds of each plan, counting only what differs between them."""
    fused = 4 * LAUNCH_SECONDS  # 1 forward + 3 backward launches, whatever K
    hybrid = 3 * LAUNCH_SECONDS  # 1 forward + 2 backward launches of the fused rest
    for head in heads:
        if head.kernel == 0:
            continue
        # Fused: the conv runs in each forward pass (2 when a sample needs several tiles), again to rebuild dz,
        # and once each for the input and weight gradients; every (sample, pass) streams the weight from L2.
        forward_passes = 1 if head.fits_one_tile else 2
        fused += (forward_passes + 3) * head.conv_flops / (_gemm_rate(head.gemm_dtype, matmul_tf32) * FUSED_EFFICIENCY)
        weight_size = head.c_out * head.c_in * head.kernel**2 * head.weight_bytes
        fused += (forward_passes + 1) * head.batch * weight_size / L2_BYTES_PER_S
        # Hybrid: cuDNN's forward, input-gradient and weight-gradient convs, a cast of the weight to the GEMM
        # dtype, and the conv output / its gradient written and read back (5 trips through DRAM).
        hybrid += 3 * head.conv_flops / (_gemm_rate(head.gemm_dtype, cudnn_tf32) * CUDNN_EFFICIENCY)
        hybrid += 4 * LAUNCH_SECONDS
        conv_bytes = head.batch * head.c_out * head.height * head.width * head.gemm_dtype.itemsize
        hybrid += 5 * conv_bytes / DRAM_BYTES_PER_S
    return {"triton": fused, "hybrid": hybrid}


def choose_fused_plan(heads: Sequence[HeadShape], matmul_tf32: bool = False, cudnn_tf32: bool = True) -> str:
    """`triton` (fully fused) or `hybrid` (cuDNN head conv + fused rest), whichever the model says is faster:
    fully fused where the head GEMMs are small and launches dominate (CIFAR's 64x8x8), hybrid where the conv
    dominates (ImageNet's 512x7x7 at B=256). Identity heads have no conv for cuDNN: always fully fused."""
    if all(head.kernel == 0 for head in heads):
        return "triton"
    seconds = plan_seconds(heads, matmul_tf32, cudnn_tf32)
    return "hybrid" if seconds["hybrid"] < seconds["triton"] else "triton"


def head_shapes(inputs: FEEDInputs, gemm_dtypes: Sequence[torch.dtype]) -> list[HeadShape]:
    return [
        HeadShape(t.shape[0], h.shape[1], t.shape[1], t.shape[2], t.shape[3], k, d,
                  w.element_size() if w is not None else 0)
        for h, t, w, k, d in zip(inputs.head_inputs, inputs.teachers, inputs.weights, inputs.kernel_sizes,
                                 gemm_dtypes)
    ]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 -- ImportError, or a broken install raising anything at import
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(
    backend: str, inputs: FEEDInputs, gemm_dtypes: Sequence[torch.dtype], matmul_tf32: bool, cudnn_tf32: bool
) -> str:
    """The backend that runs this call: `backend` itself, checked, or what `auto` picks."""
    device = inputs.teachers[0].device
    if backend == "auto":
        if device.type != "cuda" or not triton_available() or first_float64(inputs) is not None:
            return "torch"
        return choose_fused_plan(head_shapes(inputs, gemm_dtypes), matmul_tf32, cudnn_tf32)
    if backend in ("triton", "hybrid"):
        if not triton_available():
            raise RuntimeError(f"backend={backend!r} needs the triton package (pip install triton); use backend='torch'")
        if device.type != "cuda" and not interpreter_enabled():
            raise ValueError(
                f"backend={backend!r} needs CUDA tensors (got {device}) or TRITON_INTERPRET=1 set before "
                "feed_fast is imported; use backend='torch' on the CPU"
            )
        reject_float64(inputs, backend)
    return backend

"""Which implementation runs a `feed_loss` call, decided per call from the shapes and dtypes.

- `torch`: the eager reference (`feed_fast.ops.reference`); any device, any float dtype.
- `triton`: fully fused kernels, head conv included (`feed_fast.kernels.feed_loss`): 1 forward + 4 backward
  launches for all K teachers, nothing but per-sample scalars saved.
- `hybrid`: cuDNN runs the head conv (forward, input and weight gradients); the same fused kernels do bias,
  activation, both norms and the L1 (`feed_fast.ops.hybrid`).
- `auto`: `torch` off CUDA (and for float64 or without triton); on CUDA, `choose_fused_plan` below, for the
  launch mode the call runs in (`launch_mode`: eager, or replayed from a CUDA graph).

`choose_fused_plan` is a cost model, not a measurement. It models each plan's kernels one by one: the host time
to issue them from Python (eager only: a CUDA graph replays without it), the GPU's floor per kernel (stays in a
graph, and cuDNN's convs launch several), and each fused kernel's time from its CTAs (the grids of
`feed_fast.kernels.tiling`), the CTAs an SM holds at once (from the compiled kernels' registers and shared
memory) and the waves that makes on 132 SMs. Its constants sit together below, each with its source: H100
datasheet figures, figures read from the compiled kernels (benchmarks/kernel_figures.py), and guesses, the
thresholds to replace once benchmarks/gpu_check.sh has measured both plans. docs/ops.md tabulates what the
model picks for the benchmark shapes and why.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..kernels import tiling
from .validation import FEEDInputs, first_float64, reject_float64

# ---- the model's constants: an H100 SXM; each to be replaced by what benchmarks/gpu_check.sh measures ----------
# Dense peaks (NVIDIA H100 SXM datasheet: 989 TFLOP/s bf16/fp16, 494 TF32 tensor core, 67 fp32 FMA).
PEAK_FLOPS = {torch.bfloat16: 989e12, torch.float16: 989e12, "tf32": 494e12, torch.float32: 67e12}
DRAM_BYTES_PER_S = 3.0e12  # measured device copy on the lent H100 (shared/FIELD_NOTES.md)
L2_BYTES_PER_S = 7.0e12  # guess (about twice HBM3): the fused kernels stream weights and features from L2
CUDNN_EFFICIENCY = 0.6  # guess: share of the peak cuDNN's conv reaches at these sizes
# guess: share of an SM's peak a fused implicit-GEMM CTA reaches with enough warps resident (64 x 64 tiles, a
# 32-deep pipelined loop); fewer resident warps scale it down (LATENCY_HIDING_WARPS).
FUSED_EFFICIENCY = 0.4
LATENCY_HIDING_WARPS = 16  # guess: resident warps an SM needs to keep its tensor cores and loads busy
# Host time to issue one launch from Python (eager only; a CUDA graph replays without any host work).
HOST_SECONDS_PER_TRITON_LAUNCH = 20e-6  # guess: Triton's launcher binds and checks every tuple argument
HOST_SECONDS_PER_ATEN_OP = 8e-6  # guess: one aten op (a cuDNN conv, a cast) through the dispatcher and autograd
# The GPU's floor per kernel: launch latency, ramp-up and drain (guess, 2-4 us on Hopper). It stays in a graph.
GPU_SECONDS_PER_KERNEL = 3e-6
# cuDNN kernels per conv call (guess): forward 1; convolution_backward 2 (data and weight gradients).
CUDNN_KERNELS = {"forward": 1, "backward": 2}
# CTAs per SM of the fused kernels, from their registers and shared memory as compiled for sm_90 (Triton 3.8,
# benchmarks/results/kernel_figures_sm90.json; tests/test_kernel_figures.py keeps these equal to it), per plan and
# tiling: one tile per sample (the CIFAR 3x3 case) or several (the ImageNet 3x3 case), bf16.
FUSED_CTAS_PER_SM = {
    ("fused", "one_tile"): {"forward": 3, "grad_preact": 1, "grad_input": 4, "grad_weight": 4, "grad_reduce": 16},
    ("fused", "multi_tile"): {"forward": 1, "grad_preact": 1, "grad_input": 4, "grad_weight": 4, "grad_reduce": 12},
    ("hybrid", "one_tile"): {"forward": 2, "grad_preact": 2, "grad_reduce": 16},
    ("hybrid", "multi_tile"): {"forward": 2, "grad_preact": 2, "grad_reduce": 12},
}
LAUNCH_MODES = ("eager", "graph")


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
    has_bias: bool = True

    @property
    def positions(self) -> int:
        return self.height * self.width

    @property
    def conv_flops(self) -> float:
        return 2.0 * self.batch * self.c_out * self.c_in * self.kernel**2 * self.positions

    @property
    def weight_elements(self) -> int:
        return self.c_out * self.c_in * self.kernel**2

    def feature_bytes(self, channels: int) -> int:
        return self.batch * channels * self.positions * self.gemm_dtype.itemsize

    def tiling(self, tf32: bool) -> tiling.HeadTiling:
        return tiling.head_tiling(self.c_in, self.c_out, self.positions,
                                  fma_gemm=self.gemm_dtype == torch.float32 and not tf32)


@dataclass(frozen=True)
class Kernel:
    """One GPU kernel of a plan, as the model times it."""

    name: str
    ctas: int  # CTAs that do work (a cuDNN kernel: 0, i.e. assumed to fill the GPU)
    ctas_per_sm: int  # CTAs one SM holds at once (compiled registers and shared memory)
    warps: int
    flops: float
    flop_rate: float  # FLOP/s the whole GPU reaches on it with enough warps resident
    bytes: float
    byte_rate: float


def kernel_seconds(kernel: Kernel, gpu: GPU = H100) -> float:
    """The GPU's floor per kernel plus its busiest SM's time. That SM runs cdiv(CTAs, SMs) of the CTAs (the
    waves; a grid smaller than the GPU leaves SMs idle), holding at most `ctas_per_sm` at once; with fewer than
    LATENCY_HIDING_WARPS warps resident it runs proportionally slower. Compute and memory overlap (roofline)."""
    if kernel.ctas == 0:  # a library kernel: the whole GPU at the given rates
        share, speed = 1.0 / gpu.sms, 1.0
    else:
        per_sm = -(-kernel.ctas // gpu.sms)
        share = per_sm / kernel.ctas
        speed = min(1.0, min(per_sm, kernel.ctas_per_sm) * kernel.warps / LATENCY_HIDING_WARPS)
    compute = kernel.flops * share / (kernel.flop_rate / gpu.sms * speed)
    memory = kernel.bytes * share / (kernel.byte_rate / gpu.sms * speed)
    return GPU_SECONDS_PER_KERNEL + max(compute, memory)


@dataclass
class PlanCost:
    """What one forward + backward of a plan costs: host seconds to issue it (eager only) and its kernels."""

    host_seconds: float = 0.0
    kernels: list[Kernel] = field(default_factory=list)

    @property
    def gpu_seconds(self) -> float:
        return sum(kernel_seconds(k) for k in self.kernels)

    def seconds(self, mode: str) -> float:
        """Eager: the host issues launches while the GPU runs earlier ones, so the slower of the two sets the
        pace. Graph: one replay, no host work per kernel, only the GPU's time."""
        if mode not in LAUNCH_MODES:
            raise ValueError(f"mode must be one of {LAUNCH_MODES}, got {mode!r}")
        return self.gpu_seconds if mode == "graph" else max(self.host_seconds, self.gpu_seconds)


def _gemm_rate(dtype: torch.dtype, tf32: bool) -> float:
    return PEAK_FLOPS["tf32"] if dtype == torch.float32 and tf32 else PEAK_FLOPS[dtype]


def _tiling_class(tilings) -> str:
    return "one_tile" if all(t.single_tile for t in tilings) else "multi_tile"


def _fused_launch(cost: PlanCost, name: str, occupancy: dict, ctas, flops, bytes_) -> None:
    """One Triton launch for all K heads: per-head CTAs, FLOPs and bytes summed (the launch's GEMM rate is
    the slowest head's)."""
    rate = min((rate for _, rate in flops), default=PEAK_FLOPS[torch.bfloat16]) * FUSED_EFFICIENCY
    cost.host_seconds += HOST_SECONDS_PER_TRITON_LAUNCH
    cost.kernels.append(Kernel(name, max(1, sum(ctas)), occupancy[name], tiling.WARPS[name][0],
                               sum(f for f, _ in flops), rate, sum(bytes_), L2_BYTES_PER_S))


def fused_plan_cost(heads: Sequence[HeadShape], matmul_tf32: bool) -> PlanCost:
    """The fully fused plan: 1 forward + 4 backward launches for all K (kernels/feed_loss.py)."""
    cost = PlanCost()
    convs = [h for h in heads if h.kernel]
    tiles = {id(h): h.tiling(matmul_tf32) for h in heads}
    occupancy = FUSED_CTAS_PER_SM["fused", _tiling_class(tiles.values())]
    # Forward and dz pass: one CTA per (sample, head); the conv is recomputed in each (twice in the forward when a
    # sample needs several tiles: once for the norms, once for the L1), the weight streamed per sample and pass.
    passes = {id(h): 1 if tiles[id(h)].single_tile else 2 for h in heads}
    for name, extra in (("forward", 0), ("grad_preact", 1)):
        _fused_launch(
            cost, name, occupancy, [h.batch for h in heads],
            [((passes[id(h)] if name == "forward" else 1) * h.conv_flops, _gemm_rate(h.gemm_dtype, matmul_tf32))
             for h in heads],
            [(passes[id(h)] if name == "forward" else 1) * h.batch * h.weight_elements * h.weight_bytes
             + h.feature_bytes(h.c_in) + (1 + extra) * h.feature_bytes(h.c_out) for h in heads],
        )
    if convs:
        # Input gradient: (B*H*W / 64 x C_in tiles) CTAs, each streaming its C_in slice of the weight.
        _fused_launch(
            cost, "grad_input", occupancy,
            [tiling.grad_input_ctas(h.batch, h.positions, tiles[id(h)], h.c_in) for h in convs],
            [(h.conv_flops, _gemm_rate(h.gemm_dtype, matmul_tf32)) for h in convs],
            [tiling.cdiv(h.batch * h.positions, tiling.BLOCK_N) * h.weight_elements * h.weight_bytes
             + tiling.cdiv(h.c_in, tiles[id(h)].block_ci) * h.feature_bytes(h.c_out) + h.feature_bytes(h.c_in)
             for h in convs],
        )
        # Weight gradient: (C_t tile, C_in tile, tap) tiles, split over the batch when too few (kernels/tiling.py).
        all_tiles = sum(tiling.grad_weight_tiles(tiles[id(h)], h.c_in, h.c_out, h.kernel) for h in convs)
        split = tiling.weight_split(convs[0].batch, all_tiles, min(h.positions for h in convs), H100.sms)
        _fused_launch(
            cost, "grad_weight", occupancy,
            [tiling.grad_weight_tiles(tiles[id(h)], h.c_in, h.c_out, h.kernel) * split.splits for h in convs],
            [(h.conv_flops, _gemm_rate(h.gemm_dtype, matmul_tf32)) for h in convs],
            [h.kernel**2 * (tiling.cdiv(h.c_in, tiles[id(h)].block_ci) * h.feature_bytes(h.c_out)
                            + tiling.cdiv(h.c_out, tiles[id(h)].block_ct) * h.feature_bytes(h.c_in))
             + (split.splits > 1) * split.splits * h.weight_elements * 4 for h in convs],
        )
    else:
        split = tiling.WeightSplit(1, heads[0].batch)
    if split.splits > 1 or any(h.has_bias for h in heads):
        _reduce_launch(cost, heads, convs if split.splits > 1 else [], split.splits, occupancy)
    return cost


def _reduce_launch(cost: PlanCost, heads, split_heads, splits: int, occupancy: dict) -> None:
    channels = sum(h.c_out for h in heads if h.has_bias)
    bias = tiling.bias_blocks(heads[0].batch, channels, H100.sms)
    _fused_launch(
        cost, "grad_reduce", occupancy,
        [tiling.cdiv(h.weight_elements, tiling.BLOCK_E) for h in split_heads]
        + [tiling.cdiv(h.c_out, bias.block_cb) for h in heads if h.has_bias],
        [],
        [(splits + 1) * h.weight_elements * 4 for h in split_heads]
        + [h.batch * h.c_out * 4 for h in heads if h.has_bias],
    )


def hybrid_plan_cost(heads: Sequence[HeadShape], cudnn_tf32: bool) -> PlanCost:
    """The hybrid plan: per head a cuDNN conv and its backward (+ casts of fp32 master weights to the GEMM dtype
    and of the gradient back), then the fused rest for all K: forward, dz pass, reduce."""
    cost = PlanCost()
    occupancy = FUSED_CTAS_PER_SM["hybrid", _tiling_class(h.tiling(False) for h in heads)]
    for h in heads:
        if not h.kernel:
            continue
        casts = 2 if h.weight_bytes != h.gemm_dtype.itemsize else 0
        cost.host_seconds += (2 + casts) * HOST_SECONDS_PER_ATEN_OP
        rate = _gemm_rate(h.gemm_dtype, cudnn_tf32) * CUDNN_EFFICIENCY
        # The conv output and its gradient: written, read back and saved (5 trips through DRAM in all).
        traffic = 5 * h.feature_bytes(h.c_out) + 2 * h.feature_bytes(h.c_in)
        for step, flops in (("forward", h.conv_flops), ("backward", 2 * h.conv_flops)):
            for part in range(CUDNN_KERNELS[step]):
                share = flops / CUDNN_KERNELS[step]
                moved = traffic / sum(CUDNN_KERNELS.values())
                cost.kernels.append(Kernel(f"cudnn_{step}_{part}", 0, 0, 0, share, rate, moved, DRAM_BYTES_PER_S))
        for part in range(casts):
            cost.kernels.append(Kernel(f"cast_{part}", 0, 0, 0, 0.0, 1.0, h.weight_elements * 6, DRAM_BYTES_PER_S))
    for name, maps in (("forward", 2), ("grad_preact", 3)):  # conv output + teacher (+ dz written)
        _fused_launch(cost, name, occupancy, [h.batch for h in heads], [],
                      [maps * h.feature_bytes(h.c_out) for h in heads])
    if any(h.has_bias for h in heads):
        _reduce_launch(cost, heads, [], 1, occupancy)
    return cost


def plan_costs(heads: Sequence[HeadShape], matmul_tf32: bool, cudnn_tf32: bool) -> dict[str, PlanCost]:
    return {"triton": fused_plan_cost(heads, matmul_tf32), "hybrid": hybrid_plan_cost(heads, cudnn_tf32)}


def plan_seconds(heads: Sequence[HeadShape], matmul_tf32: bool, cudnn_tf32: bool,
                 mode: str = "eager") -> dict[str, float]:
    """Modelled forward+backward seconds of each plan in `mode` ("eager" or "graph")."""
    return {plan: cost.seconds(mode) for plan, cost in plan_costs(heads, matmul_tf32, cudnn_tf32).items()}


def choose_fused_plan(heads: Sequence[HeadShape], matmul_tf32: bool = False, cudnn_tf32: bool = True,
                      mode: str = "eager") -> str:
    """`triton` (fully fused) or `hybrid` (cuDNN head conv + fused rest), whichever the model says is faster in
    `mode`: fully fused where the head GEMMs are small and launches dominate (CIFAR's 64x8x8), hybrid where the
    conv dominates (ImageNet's 512x7x7 at B=256). Identity heads have no conv for cuDNN: always fully fused."""
    if all(head.kernel == 0 for head in heads):
        return "triton"
    seconds = plan_seconds(heads, matmul_tf32, cudnn_tf32, mode)
    return "hybrid" if seconds["hybrid"] < seconds["triton"] else "triton"


_launch_mode: str | None = None  # set by `launch_mode`; None: detected per call


@contextlib.contextmanager
def launch_mode(mode: str) -> Iterator[None]:
    """Within: `auto` models the plans as launched in `mode`, "eager" or "graph". A call made while a CUDA graph
    is being captured is known to be "graph"; code that is traced first and captured later (a compiled step
    warmed up, then captured) picks its plan while tracing and says so with `launch_mode("graph")`."""
    global _launch_mode
    if mode not in LAUNCH_MODES:
        raise ValueError(f"mode must be one of {LAUNCH_MODES}, got {mode!r}")
    saved, _launch_mode = _launch_mode, mode
    try:
        yield
    finally:
        _launch_mode = saved


def current_launch_mode(device: torch.device) -> str:
    """`launch_mode`'s mode if one is set; else "graph" while a CUDA graph is being captured, "eager" otherwise.
    While torch.compile traces (the capture, if any, comes later) only an explicit mode counts: the capture
    query is a C call that Dynamo would have to break the graph for."""
    if _launch_mode is not None:
        return _launch_mode
    if device.type == "cuda" and not torch.compiler.is_compiling() and torch.cuda.is_current_stream_capturing():
        return "graph"
    return "eager"


def head_shapes(inputs: FEEDInputs, gemm_dtypes: Sequence[torch.dtype]) -> list[HeadShape]:
    return [
        HeadShape(t.shape[0], h.shape[1], t.shape[1], t.shape[2], t.shape[3], k, d,
                  w.element_size() if w is not None else 0, b is not None)
        for h, t, w, b, k, d in zip(inputs.head_inputs, inputs.teachers, inputs.weights, inputs.biases,
                                    inputs.kernel_sizes, gemm_dtypes)
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
        return choose_fused_plan(head_shapes(inputs, gemm_dtypes), matmul_tf32, cudnn_tf32,
                                 current_launch_mode(device))
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

"""The fused kernels' launch geometry in plain Python (no triton import): block sizes per head, grids, and the
weight-gradient split. The launch plans in `feed_loss.py` and the cost model in `feed_fast.ops.backend_choice` both
read it, so the CTAs the model counts are the CTAs the kernels launch.

Grids (K teachers in every launch; a grid dimension is the largest any teacher needs, and a teacher's programs
beyond its own tiles return at once):
- forward, grad_preact: (B, K), one program per (sample, teacher);
- grad_input: (cdiv(B*H*W, BLOCK_N), C_in tiles, K);
- grad_weight: (C_t tiles * C_in tiles * splits, taps, K);
- grad_reduce: (weight blocks + bias blocks, K).
"""
from __future__ import annotations

from dataclasses import dataclass

# num_warps per launch. Tiles are at most 64 x 64 fp32 values: at 4 warps Triton 3.6 needs more than 255
# registers per thread for them and spills, and at 16 warps (128 registers at most) both 3.6 and 3.8 spill
# (tests/test_triton_versions.py checks every config under both). So every GEMM kernel runs 8 warps (the reduce
# pass, elementwise sums of 512-value blocks, runs 4: one 16-byte load per thread and partial); with one
# config per kernel nothing is timed on the first call. A second config is one entry here once GPU
# measurements show it pays; the autotune keys already hold everything that changes the compiled code.
WARPS = {"forward": (8,), "grad_preact": (8,), "grad_input": (8,), "grad_weight": (8,), "grad_reduce": (4,)}
BLOCK_N = 64  # (sample, position) pairs per step of the backward GEMMs
# The weight-gradient pass is split over the batch until it has this many CTAs per SM (at least one CTA on every
# SM, with some to spare for the uneven tail), each split holding at least this many (sample, position) pairs.
SPLIT_CTAS_PER_SM = 2
SPLIT_MIN_POSITIONS = 2 * BLOCK_N
BLOCK_E = 512  # weight elements per program of the reduce pass (4 warps: one 16-byte load per thread and split)
BIAS_TILE = 2048  # per-sample bias partials per tile of the reduce pass (BLOCK_RB samples x BLOCK_CB channels)
MAX_TILE = 64  # output tiles are at most 64 x 64 fp32 values (8 warps hold them without spilling)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()


def pow2_between(n: int, low: int, high: int) -> int:
    return max(low, min(high, next_pow2(n)))


def pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


@dataclass(frozen=True)
class HeadTiling:
    """Block sizes of one teacher's head. `fma_gemm`: IEEE fp32 operands, whose GEMMs run on the FMA units."""

    block_k: int  # GEMM depth per forward step (input channels)
    block_c: int  # forward / grad_preact output tile: channels
    block_p: int  # ... and positions
    single_tile: bool  # a sample fits one (block_c x block_p) tile: the one-pass forward
    block_ci: int  # grad_input output tile (input channels) and grad_weight's C_in tile
    block_co: int  # grad_input GEMM depth per step (teacher channels)
    block_ct: int  # grad_weight's C_t tile


def head_tiling(c_in: int, c_out: int, positions: int, fma_gemm: bool) -> HeadTiling:
    # GEMM depth per step: IEEE fp32 GEMMs are FMA loops that spill at 8 warps with 32-deep steps (ptxas caps them
    # at 128 registers), 16 does not; tensor-core GEMMs take 32. IEEE fp32 forward tiles hold 32 channels (ptxas
    # spills the 64-channel FMA tile under Triton 3.8).
    depth = 16 if fma_gemm else 32
    block_c = pow2_between(c_out, 16, 32 if fma_gemm else MAX_TILE)
    block_p = pow2_between(positions, 16, MAX_TILE)
    return HeadTiling(
        block_k=pow2_between(c_in, 16, depth), block_c=block_c, block_p=block_p,
        single_tile=c_out <= block_c and positions <= block_p,
        block_ci=pow2_between(c_in, 16, MAX_TILE), block_co=pow2_between(c_out, 16, depth),
        block_ct=pow2_between(c_out, 16, MAX_TILE),
    )


@dataclass(frozen=True)
class WeightSplit:
    splits: int  # CTAs per weight-gradient tile, each over `split_batch` whole samples
    split_batch: int


def weight_split(batch: int, tiles: int, min_positions: int, sms: int) -> WeightSplit:
    """`tiles` weight-gradient output tiles (C_t tile, C_in tile, tap) for all K; `min_positions`: the fewest
    positions per sample among the heads. Too few tiles to give every SM SPLIT_CTAS_PER_SM of them -> the batch
    is split into runs of whole samples (each at least SPLIT_MIN_POSITIONS pairs), one CTA per tile and run."""
    wanted = cdiv(SPLIT_CTAS_PER_SM * sms, max(1, tiles))
    if wanted <= 1:
        return WeightSplit(1, batch)
    split_batch = max(cdiv(batch, wanted), cdiv(SPLIT_MIN_POSITIONS, max(1, min_positions)))
    return WeightSplit(cdiv(batch, split_batch), split_batch) if split_batch < batch else WeightSplit(1, batch)


@dataclass(frozen=True)
class BiasBlocks:
    block_cb: int  # channels per program
    block_rb: int  # samples per tile


def bias_blocks(batch: int, channels: int, sms: int) -> BiasBlocks:
    """The reduce pass's bias programs: as few channels each as it takes to give every SM one (`channels`: the
    biased heads' channels summed over K), and tiles of BIAS_TILE partials."""
    block_cb = min(MAX_TILE, pow2_floor(channels // sms))
    return BiasBlocks(block_cb, pow2_between(batch, 1, max(1, BIAS_TILE // block_cb)))


def grad_input_ctas(batch: int, positions: int, tiling: HeadTiling, c_in: int) -> int:
    return cdiv(batch * positions, BLOCK_N) * cdiv(c_in, tiling.block_ci)


def grad_weight_tiles(tiling: HeadTiling, c_in: int, c_out: int, kernel: int) -> int:
    return cdiv(c_out, tiling.block_ct) * cdiv(c_in, tiling.block_ci) * kernel * kernel

"""Fused FEED loss kernels: translator head (1x1/3x3 conv as an implicit GEMM, bias, LeakyReLU) +
per-sample L2 normalisation of head output and teacher map + L1 distance, forward and backward.

The math is the one in docs/method.md (and `feed_fast.ops.reference`, the readable twin). Shapes, strides and
dtypes may differ per teacher: every launch takes per-teacher tuples and handles all K teachers at once
(`tl.static_range` over the teacher index selects each teacher's constexpr specialisation), so the number of
launches never depends on K.

Forward, one program per (sample, teacher): the head output y is recomputed tile by tile and never written.
When a sample fits one tile (CIFAR-sized maps) a single pass over memory does everything; otherwise pass 1
gathers the two norms and pass 2 recomputes y for the L1. Each row of `terms` is multiplied by its teacher's
Python-float `scale` (beta and the reduction, decided by `feed_fast.ops.functional`). Saved for backward:
per-sample scalars only (||y||, ||t||, <u, sign(u - v)>).

Backward (four launches): (1) per (sample, teacher), recompute y and write dz = dL/d(pre-activation) in the
GEMM operand dtype, plus per-sample bias partial sums in float32; for a teacher without a head conv (identity,
or the hybrid plan where cuDNN owns the conv) dz *is* the input gradient and goes straight into it; (2) input
gradient, the transposed conv of dz with W; (3) weight gradient, one CTA per (C_t tile, C_in tile, tap) and
split of the batch: where those tiles are too few to fill the GPU (small heads: CIFAR has 27 for 132 SMs) the
batch is split and each split writes fp32 partials; (4) the reduce pass: the split partials added in split
order, and the bias gradient summed over the batch from the per-sample partials, many channels at once. Every
reduction runs in a fixed order (no atomics), so results are deterministic for a given call signature and
device, and gradients are written in each parameter's own dtype and layout.

GEMM precision: float32 operands run IEEE fp32 (`input_precision="ieee"`) unless the caller asks for TF32;
bf16/fp16 operands run on tensor cores. The IEEE fp32 specialisation (EXACT) also divides and takes square roots
rounded to nearest (`_div`, `_sqrt`), as the interpreter does, so compiled and interpreted float32 results differ
only in the order of sums. Each GEMM is one software-pipelined loop over (tap, channel tile). Weights are read with C_in innermost (stride 1): OHWI, i.e.
channels-last, which `module.to(memory_format=torch.channels_last)` gives; other 3x3 layouts are repacked
once per call by the host code below.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from ..ops.backend_choice import H100
from ..ops.numerics import NORM_SCALE_FLOOR as _NORM_SCALE_FLOOR
from . import tiling

# Triton's interpreter (3.8) computes tl.dot wrongly for bfloat16 operands. There the operands are rounded to
# the low-precision dtype as on a GPU, then multiplied in float32: the same products, exactly.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")

NORM_SCALE_FLOOR = tl.constexpr(_NORM_SCALE_FLOOR)
STATS = 3  # per (teacher, sample): ||y|| (unclamped), ||t|| (unclamped), <u, sign(u - v)>

# num_warps per launch (kernels/tiling.py, where the cost model reads them too).
WARPS = tiling.WARPS
# Register caps (ptxas `.maxnreg`), per kernel and head class, where ptxas's own choice spills. Left to itself
# ptxas aims at a register count of its own and may spill to meet it; seen at the shapes users run (the B=128/256
# specialisations): the IEEE fp32 forward (128 registers + 8-24 stack bytes, Triton 3.6 and 3.8), the dz pass of a
# head without conv (the hybrid plan: 64 + 8 stack bytes, both) and its forward in fp32 (64 + 16, Triton 3.6). A
# cap makes ptxas fit what is needed below it instead: 255 (1 CTA of 8 warps per SM) or 128 (2 CTAs), which both
# fit without spilling. (A 128 cap on the bf16 dz pass would give 2 CTAs per SM, and spills under Triton 3.6 with
# a 1x1 head: left alone.) A launch takes the loosest cap of its teachers' classes; a class without an entry
# leaves ptxas its choice, and a launch mixing it with a capped class gets 255. tests/test_triton_versions.py
# compiles the shapes users run under both versions and asserts no local memory.
REGISTER_CAPS = {"forward": {"fma": 255, "none": 128}, "grad_preact": {"none": 128}}
_AUTOTUNED: list = []


def _config(num_warps: int):
    return triton.Config({}, num_warps=num_warps)


def _autotuned(warps: tuple[int, ...], key: list[str]):
    """On a GPU, time each config the first time a key is seen and keep the fastest. Every kernel here writes
    its outputs and never accumulates into them, so re-running a config is harmless. The key holds what changes
    the compiled code: shapes (block sizes, single-tile), strides (layout class; Triton specialises strides
    equal to 1 or divisible by 16) and the per-teacher constexprs (kernel size, dtypes, precision).
    The interpreter has no warps to tune: kernels stay plain there."""

    def wrap(kernel):
        if INTERPRETED:
            return kernel
        tuned = triton.autotune(configs=[_config(w) for w in warps], key=key)(kernel)
        _AUTOTUNED.append(tuned)
        return tuned

    return wrap


@contextlib.contextmanager
def pinned_config(num_warps: int = 8):
    """Test-only: every kernel runs with `num_warps` and nothing is timed, so two calls with different autotune
    keys (e.g. K teachers at once vs one at a time) compile the same reduction order and agree bitwise."""
    saved = [(kernel, kernel.configs, dict(kernel.cache)) for kernel in _AUTOTUNED]
    for kernel in _AUTOTUNED:
        kernel.configs = [_config(num_warps)]
        kernel.cache.clear()
    try:
        yield
    finally:
        for kernel, configs, cache in saved:
            kernel.configs = configs
            kernel.cache.clear()
            kernel.cache.update(cache)


_SHAPE_KEY = ["batch", "c_ins", "c_outs", "heights", "widths"]
_TEACHER_KEY = ["KS", "HAS_W", "HAS_BIAS", "DOT_DTYPE", "TF32", "EXACT"]


@triton.jit
def _dot_operand(x, DOT_DTYPE: tl.constexpr):
    if INTERPRETED:
        if (DOT_DTYPE == tl.bfloat16) and (x.dtype == tl.float32):
            # The interpreter truncates float32 -> bfloat16 where a GPU rounds to nearest even: round here.
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True)
        return x.to(DOT_DTYPE).to(tl.float32)
    return x.to(DOT_DTYPE)


@triton.jit
def _mma(a, b, acc, DOT_DTYPE: tl.constexpr, TF32: tl.constexpr):
    """acc + a @ b with operands rounded to DOT_DTYPE in registers (bf16/fp16 tensor cores, or fp32: IEEE,
    or TF32 when the caller allowed it) and fp32 accumulation. fp32 master weights are read once and cast here.
    (TF32 is a bool rather than the precision string: Triton 3.6 cannot index a tuple of string constexprs.)"""
    a = _dot_operand(a, DOT_DTYPE)
    b = _dot_operand(b, DOT_DTYPE)
    if TF32:
        return tl.dot(a, b, acc, input_precision="tf32")
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _tap_and_k0(step, k_tiles, KS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step `step` of a loop over (tap, reduction tile), taps outermost -> (tap, first channel of the tile)."""
    if KS == 1:
        return 0, step * BLOCK_K
    tap = step // k_tiles
    return tap, (step - tap * k_tiles) * BLOCK_K


@triton.jit
def _head_preact(
    h_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width,
    s_hb, s_hc, s_hh, s_hw, s_wo, s_wi, s_wh, s_ww,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    TF32: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """z[c, p] = sum_{ci, tap} W[c, ci, tap] h[b, ci, p + tap] + bias[c] for a BLOCK_C x BLOCK_P tile, fp32.
    Lanes outside the tensor are zero (bias included), so they add nothing to norms or sums."""
    mask_c = offs_c < c_out
    mask_p = offs_p < height * width
    ph = offs_p // width
    pw = offs_p % width
    h_base = h_ptr + b.to(tl.int64) * s_hb
    if HAS_W:
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        k_tiles = tl.cdiv(c_in, BLOCK_K)
        # One loop over (tap, input-channel tile), not a loop per tap: the software pipeline fills once per output
        # tile and stays full across taps (a loop per tap drains it KS*KS times, each loop c_in/BLOCK_K deep).
        for step in range(KS * KS * k_tiles):
            tap, k0 = _tap_and_k0(step, k_tiles, KS, BLOCK_K)
            ih = ph + (tap // KS - KS // 2)
            iw = pw + (tap % KS - KS // 2)
            valid_p = mask_p & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < c_in
            w = tl.load(
                w_ptr + offs_c[:, None] * s_wo + offs_k[None, :] * s_wi + (tap // KS) * s_wh + (tap % KS) * s_ww,
                mask=mask_c[:, None] & mask_k[None, :], other=0.0,
            )
            x = tl.load(
                h_base + offs_k[:, None] * s_hc + ih[None, :] * s_hh + iw[None, :] * s_hw,
                mask=mask_k[:, None] & valid_p[None, :], other=0.0,
            )
            acc = _mma(w, x, acc, DOT_DTYPE, TF32)
    else:
        acc = tl.load(
            h_base + offs_c[:, None] * s_hc + ph[None, :] * s_hh + pw[None, :] * s_hw,
            mask=mask_c[:, None] & mask_p[None, :], other=0.0,
        ).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    return tl.where(mask_c[:, None] & mask_p[None, :], acc, 0.0)


@triton.jit
def _activate(z, slope, HAS_ACT: tl.constexpr):
    if HAS_ACT:
        return tl.where(z > 0, z, z * slope)
    return z


@triton.jit
def _offsets4(b, offs_c, offs_p, width, s):
    """Element offsets of a (channels x positions) tile of sample b in a 4-D tensor with strides s."""
    return b.to(tl.int64) * s[0] + offs_c[:, None] * s[1] + (offs_p // width)[None, :] * s[2] \
        + (offs_p % width)[None, :] * s[3]


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _div(a, b, EXACT: tl.constexpr):
    """a / b. EXACT (the IEEE fp32 specialisation): rounded to nearest (div.rn.f32), as the interpreter, numpy and
    torch divide; otherwise the GPU's `/` (div.full.f32, within 2 ulp), ample for bf16/fp16/TF32 operands."""
    if EXACT:
        a, b = tl.broadcast(a, b)
        return tl.math.div_rn(a, b)
    return a / b


@triton.jit
def _sqrt(x, EXACT: tl.constexpr):
    """sqrt(x). EXACT: rounded to nearest (sqrt.rn.f32); otherwise tl.sqrt (sqrt.approx.f32, about 1 ulp)."""
    if EXACT:
        return tl.math.sqrt_rn(x)
    return tl.sqrt(x)


@triton.jit
def _running_sum_sq(x, scale, total, EXACT: tl.constexpr):
    """One tile's update of a running L2 norm kept as scale * sqrt(total), scale = max|x| so far (floored at
    NORM_SCALE_FLOOR): squares of large features never overflow float32. Same math as reference.l2_normalize."""
    new_scale = tl.maximum(scale, tl.max(tl.max(tl.abs(x), axis=1), axis=0))
    ratio = _div(scale, new_scale, EXACT)
    xs = _div(x, new_scale, EXACT)
    return new_scale, total * ratio * ratio + tl.sum(tl.sum(xs * xs, axis=1), axis=0)


@triton.jit
def _clamped(norm, eps):
    # NaN-propagating max: a NaN norm must stay NaN, never become eps.
    return tl.maximum(norm, eps, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _tile(
    h_ptr, t_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width, s_h, s_t, s_w,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    TF32: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (channels x positions) tile of sample b: the head's pre-activation z and the teacher map t, fp32."""
    z = _head_preact(h_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width,
                     s_h[0], s_h[1], s_h[2], s_h[3], s_w[0], s_w[1], s_w[2], s_w[3],
                     KS, HAS_W, HAS_BIAS, DOT_DTYPE, TF32, BLOCK_C, BLOCK_P, BLOCK_K)
    mask = (offs_c < c_out)[:, None] & (offs_p < height * width)[None, :]
    t = tl.load(t_ptr + _offsets4(b, offs_c, offs_p, width, s_t), mask=mask, other=0.0).to(tl.float32)
    return z, t


@triton.jit
def _forward_one_teacher(
    h_ptr, t_ptr, w_ptr, bias_ptr, terms_ptr, stats_ptr, b, k, batch, scale, slope, eps,
    c_in, c_out, height, width, s_h, s_t, s_w,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, TF32: tl.constexpr, EXACT: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE_TILE: tl.constexpr,
):
    n_pos = height * width
    arange_c = tl.arange(0, BLOCK_C)
    arange_p = tl.arange(0, BLOCK_P)
    if SINGLE_TILE:
        # The whole sample lives in registers: one pass over memory.
        z, t = _tile(h_ptr, t_ptr, w_ptr, bias_ptr, b, arange_c, arange_p, c_in, c_out, height, width,
                     s_h, s_t, s_w, KS, HAS_W, HAS_BIAS, DOT_DTYPE, TF32, BLOCK_C, BLOCK_P, BLOCK_K)
        y = _activate(z, slope, HAS_ACT)
        floor = tl.full((), NORM_SCALE_FLOOR, tl.float32)
        scale_y, sum_y = _running_sum_sq(y, floor, 0.0, EXACT)
        scale_t, sum_t = _running_sum_sq(t, floor, 0.0, EXACT)
        norm_y = scale_y * _sqrt(sum_y, EXACT)
        norm_t = scale_t * _sqrt(sum_t, EXACT)
        u = _div(y, _clamped(norm_y, eps), EXACT)
        d = u - _div(t, _clamped(norm_t, eps), EXACT)
        l1 = tl.sum(tl.sum(tl.abs(d), axis=1), axis=0)
        dot = tl.sum(tl.sum(u * _sign(d), axis=1), axis=0)
    else:
        scale_y = tl.full((), NORM_SCALE_FLOOR, tl.float32)
        scale_t = tl.full((), NORM_SCALE_FLOOR, tl.float32)
        sum_y = tl.zeros((), dtype=tl.float32)
        sum_t = tl.zeros((), dtype=tl.float32)
        for p0 in range(0, n_pos, BLOCK_P):
            for c0 in range(0, c_out, BLOCK_C):
                offs_c = c0 + arange_c
                offs_p = p0 + arange_p
                z, t = _tile(h_ptr, t_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width,
                             s_h, s_t, s_w, KS, HAS_W, HAS_BIAS, DOT_DTYPE, TF32, BLOCK_C, BLOCK_P, BLOCK_K)
                y = _activate(z, slope, HAS_ACT)
                scale_y, sum_y = _running_sum_sq(y, scale_y, sum_y, EXACT)
                scale_t, sum_t = _running_sum_sq(t, scale_t, sum_t, EXACT)
        norm_y = scale_y * _sqrt(sum_y, EXACT)
        norm_t = scale_t * _sqrt(sum_t, EXACT)
        den_y = _clamped(norm_y, eps)
        den_t = _clamped(norm_t, eps)
        acc_l1 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        acc_dot = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for p0 in range(0, n_pos, BLOCK_P):
            for c0 in range(0, c_out, BLOCK_C):
                offs_c = c0 + arange_c
                offs_p = p0 + arange_p
                z, t = _tile(h_ptr, t_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width,
                             s_h, s_t, s_w, KS, HAS_W, HAS_BIAS, DOT_DTYPE, TF32, BLOCK_C, BLOCK_P, BLOCK_K)
                # u and v as the one-tile path and the dz pass compute them: the same signs of u - v everywhere.
                u = _div(_activate(z, slope, HAS_ACT), den_y, EXACT)
                d = u - _div(t, den_t, EXACT)
                acc_l1 += tl.sum(tl.abs(d), axis=1)
                acc_dot += tl.sum(u * _sign(d), axis=1)
        l1 = tl.sum(acc_l1, axis=0)
        dot = tl.sum(acc_dot, axis=0)
    row = k * batch + b
    tl.store(terms_ptr + row, scale * l1)
    tl.store(stats_ptr + row * 3 + 0, norm_y)
    tl.store(stats_ptr + row * 3 + 1, norm_t)
    tl.store(stats_ptr + row * 3 + 2, dot)


@_autotuned(WARPS["forward"], _SHAPE_KEY + ["s_hs", "s_ts", "s_ws", "HAS_ACT"] + _TEACHER_KEY)
@triton.jit
def feed_forward_kernel(
    hs, ts, ws, biases, terms_ptr, stats_ptr, batch, scales, slope, eps,
    c_ins, c_outs, heights, widths, s_hs, s_ts, s_ws,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, TF32: tl.constexpr, EXACT: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE_TILE: tl.constexpr, NUM_TEACHERS: tl.constexpr,
):
    """Grid (B, K): terms[k, b] = scales[k] * sum_i |u_i - v_i|, stats[k, b] = (||y||, ||t||, <u, sign(u - v)>)."""
    b = tl.program_id(0)
    k = tl.program_id(1)
    for j in tl.static_range(NUM_TEACHERS):
        if k == j:
            _forward_one_teacher(
                hs[j], ts[j], ws[j], biases[j], terms_ptr, stats_ptr, b, j, batch, scales[j], slope, eps,
                c_ins[j], c_outs[j], heights[j], widths[j], s_hs[j], s_ts[j], s_ws[j],
                KS[j], HAS_W[j], HAS_BIAS[j], HAS_ACT, DOT_DTYPE[j], TF32[j], EXACT[j], BLOCK_C[j], BLOCK_P[j],
                BLOCK_K[j], SINGLE_TILE[j],
            )


@triton.jit
def _grad_preact_one_teacher(
    h_ptr, t_ptr, w_ptr, bias_ptr, dz_ptr, bias_part_ptr, grad_terms_ptr, stats_ptr, b, k, batch, scale,
    slope, eps, c_in, c_out, height, width, s_h, s_t, s_w, s_dz, s_g,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, TF32: tl.constexpr, EXACT: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = k * batch + b
    g = tl.load(grad_terms_ptr + k * s_g[0] + b * s_g[1]) * scale
    norm_y = tl.load(stats_ptr + row * 3 + 0)
    norm_t = tl.load(stats_ptr + row * 3 + 1)
    dot = tl.load(stats_ptr + row * 3 + 2)
    den_y = _clamped(norm_y, eps)
    den_t = _clamped(norm_t, eps)
    # Below eps the clamp holds the denominator constant: dL/dy = g * sign / eps, no projection term.
    proj = tl.where(norm_y >= eps, dot, 0.0)
    n_pos = height * width
    for c0 in range(0, c_out, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        bias_part = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for p0 in range(0, n_pos, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            z, t = _tile(h_ptr, t_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width,
                         s_h, s_t, s_w, KS, HAS_W, HAS_BIAS, DOT_DTYPE, TF32, BLOCK_C, BLOCK_P, BLOCK_K)
            # u and v exactly as the forward computed them, so sign(u - v) agrees with the saved <u, sign(u - v)>.
            u = _div(_activate(z, slope, HAS_ACT), den_y, EXACT)
            dy = _div(g * (_sign(u - _div(t, den_t, EXACT)) - u * proj), den_y, EXACT)
            if HAS_ACT:
                dy = tl.where(z > 0, dy, dy * slope)
            mask = (offs_c < c_out)[:, None] & (offs_p < n_pos)[None, :]
            dy = tl.where(mask, dy, 0.0)
            tl.store(dz_ptr + _offsets4(b, offs_c, offs_p, width, s_dz), dy.to(dz_ptr.dtype.element_ty), mask=mask)
            if HAS_BIAS:
                bias_part += tl.sum(dy, axis=1)
        if HAS_BIAS:
            tl.store(bias_part_ptr + b.to(tl.int64) * c_out + offs_c, bias_part, mask=offs_c < c_out)


@_autotuned(WARPS["grad_preact"], _SHAPE_KEY + ["s_hs", "s_ts", "s_ws", "s_dzs", "HAS_ACT"] + _TEACHER_KEY)
@triton.jit
def feed_grad_preact_kernel(
    hs, ts, ws, biases, dzs, bias_parts, grad_terms_ptr, stats_ptr, batch, scales, slope, eps,
    c_ins, c_outs, heights, widths, s_hs, s_ts, s_ws, s_dzs, s_g,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, TF32: tl.constexpr, EXACT: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, NUM_TEACHERS: tl.constexpr,
):
    """Grid (B, K): dz[k][b] = dL/dz (z the head's pre-activation) in dz's dtype and strides, and
    bias_parts[k][b, c] = sum over positions of dL/dz in float32."""
    b = tl.program_id(0)
    k = tl.program_id(1)
    for j in tl.static_range(NUM_TEACHERS):
        if k == j:
            _grad_preact_one_teacher(
                hs[j], ts[j], ws[j], biases[j], dzs[j], bias_parts[j], grad_terms_ptr, stats_ptr, b, j, batch,
                scales[j], slope, eps, c_ins[j], c_outs[j], heights[j], widths[j], s_hs[j], s_ts[j], s_ws[j],
                s_dzs[j], s_g, KS[j], HAS_W[j], HAS_BIAS[j], HAS_ACT, DOT_DTYPE[j], TF32[j], EXACT[j], BLOCK_C[j],
                BLOCK_P[j], BLOCK_K[j],
            )


@triton.jit
def _grad_input_one_teacher(
    dz_ptr, w_ptr, gh_ptr, pid_n, pid_c, batch, c_in, c_out, height, width, s_dz, s_w, s_gh,
    KS: tl.constexpr, DOT_DTYPE: tl.constexpr, TF32: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Output tile: BLOCK_CI input channels x BLOCK_N flattened (sample, position) indices.
    n_pos = height * width
    offs_ci = pid_c * BLOCK_CI + tl.arange(0, BLOCK_CI)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if (pid_c * BLOCK_CI < c_in) & (pid_n * BLOCK_N < batch * n_pos):
        mask_ci = offs_ci < c_in
        mask_n = offs_n < batch * n_pos
        bi = (offs_n // n_pos).to(tl.int64)
        p = offs_n % n_pos
        ph = p // width
        pw = p % width
        acc = tl.zeros((BLOCK_CI, BLOCK_N), dtype=tl.float32)
        k_tiles = tl.cdiv(c_out, BLOCK_K)
        for step in range(KS * KS * k_tiles):  # one pipelined loop over (tap, C_t tile), as in _head_preact
            tap, k0 = _tap_and_k0(step, k_tiles, KS, BLOCK_K)
            # y[p] reads h[p + off]; so h[q] receives dz[q - off].
            oh = ph - (tap // KS - KS // 2)
            ow = pw - (tap % KS - KS // 2)
            valid = mask_n & (oh >= 0) & (oh < height) & (ow >= 0) & (ow < width)
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < c_out
            w_t = tl.load(
                w_ptr + offs_ci[:, None] * s_w[1] + offs_k[None, :] * s_w[0]
                + (tap // KS) * s_w[2] + (tap % KS) * s_w[3],
                mask=mask_ci[:, None] & mask_k[None, :], other=0.0,
            )
            dz = tl.load(
                dz_ptr + bi[None, :] * s_dz[0] + offs_k[:, None] * s_dz[1] + oh[None, :] * s_dz[2]
                + ow[None, :] * s_dz[3],
                mask=mask_k[:, None] & valid[None, :], other=0.0,
            )
            acc = _mma(w_t, dz, acc, DOT_DTYPE, TF32)
        ptrs = gh_ptr + bi[None, :] * s_gh[0] + offs_ci[:, None] * s_gh[1] + ph[None, :] * s_gh[2] \
            + pw[None, :] * s_gh[3]
        tl.store(ptrs, acc.to(gh_ptr.dtype.element_ty), mask=mask_ci[:, None] & mask_n[None, :])


@_autotuned(WARPS["grad_input"], _SHAPE_KEY + ["s_dzs", "s_ws", "s_ghs", "KS", "HAS_W", "DOT_DTYPE", "TF32"])
@triton.jit
def feed_grad_input_kernel(
    dzs, ws, ghs, batch, c_ins, c_outs, heights, widths, s_dzs, s_ws, s_ghs,
    KS: tl.constexpr, HAS_W: tl.constexpr, DOT_DTYPE: tl.constexpr, TF32: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_TEACHERS: tl.constexpr,
):
    """Grid (max N tiles, max C_in tiles, K): grad_h = conv_transpose(dz, W), in h's dtype and strides."""
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    k = tl.program_id(2)
    for j in tl.static_range(NUM_TEACHERS):
        # Compile-time test first (teachers without a head conv have no input-gradient GEMM), then runtime.
        if HAS_W[j]:  # noqa: SIM102 -- a constexpr `if` and a runtime `if` do not merge in Triton
            if k == j:
                _grad_input_one_teacher(
                    dzs[j], ws[j], ghs[j], pid_n, pid_c, batch, c_ins[j], c_outs[j], heights[j], widths[j],
                    s_dzs[j], s_ws[j], s_ghs[j], KS[j], DOT_DTYPE[j], TF32[j], BLOCK_CI[j], BLOCK_N[j],
                    BLOCK_K[j],
                )


@triton.jit
def _grad_weight_one_teacher(
    dz_ptr, h_ptr, gw_ptr, part_ptr, pid_ct, pid_ci, split, tap, batch, split_batch, c_in, c_out, height, width,
    s_dz, s_h, s_gw,
    KS: tl.constexpr, DOT_DTYPE: tl.constexpr, TF32: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_CT: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n_pos = height * width
    offs_ct = pid_ct * BLOCK_CT + tl.arange(0, BLOCK_CT)
    offs_ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    mask_ct = offs_ct < c_out
    mask_ci = offs_ci < c_in
    first = split * split_batch
    if (pid_ct * BLOCK_CT < c_out) & (pid_ci * BLOCK_CI < c_in) & (tap < KS * KS) & (first < batch):
        dh = tap // KS - KS // 2
        dw = tap % KS - KS // 2
        # This CTA's share of the (sample, position) reduction: whole samples [first, last).
        start = first * n_pos
        end = tl.minimum(first + split_batch, batch) * n_pos
        acc = tl.zeros((BLOCK_CT, BLOCK_CI), dtype=tl.float32)
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < end
            bi = (offs_n // n_pos).to(tl.int64)
            p = offs_n % n_pos
            ph = p // width
            pw = p % width
            dz = tl.load(dz_ptr + bi[None, :] * s_dz[0] + offs_ct[:, None] * s_dz[1] + ph[None, :] * s_dz[2]
                         + pw[None, :] * s_dz[3], mask=mask_ct[:, None] & mask_n[None, :], other=0.0)
            ih = ph + dh
            iw = pw + dw
            valid = mask_n & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
            x_t = tl.load(h_ptr + bi[:, None] * s_h[0] + offs_ci[None, :] * s_h[1] + ih[:, None] * s_h[2]
                          + iw[:, None] * s_h[3], mask=valid[:, None] & mask_ci[None, :], other=0.0)
            acc = _mma(dz, x_t, acc, DOT_DTYPE, TF32)
        mask = mask_ct[:, None] & mask_ci[None, :]
        if SPLIT:
            # fp32 partial sums laid out (split, C_t, tap, C_in): the reduce kernel adds them in split order.
            ptrs = part_ptr + ((split * c_out + offs_ct[:, None]).to(tl.int64) * (KS * KS) + tap) * c_in \
                + offs_ci[None, :]
            tl.store(ptrs, acc, mask=mask)
        else:
            ptrs = gw_ptr + offs_ct[:, None] * s_gw[0] + offs_ci[None, :] * s_gw[1] + (tap // KS) * s_gw[2] \
                + (tap % KS) * s_gw[3]
            tl.store(ptrs, acc.to(gw_ptr.dtype.element_ty), mask=mask)


@_autotuned(WARPS["grad_weight"], _SHAPE_KEY + ["split_batch", "s_dzs", "s_hs", "s_gws", "KS", "HAS_W", "DOT_DTYPE",
                                                "TF32", "SPLIT"])
@triton.jit
def feed_grad_weight_kernel(
    dzs, hs, gws, parts, batch, split_batch, c_ins, c_outs, heights, widths, s_dzs, s_hs, s_gws, ci_tiles, splits,
    KS: tl.constexpr, HAS_W: tl.constexpr, DOT_DTYPE: tl.constexpr, TF32: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_CT: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_N: tl.constexpr, NUM_TEACHERS: tl.constexpr,
):
    """Grid (max C_t tiles * max C_in tiles * splits, max taps, K): grad_w[ct, ci, tap] = sum_{b,p} dz h over one
    split of the batch (`split_batch` whole samples). One split: written in the weight's dtype and strides;
    several (SPLIT): fp32 partials, summed in split order by `feed_grad_reduce_kernel` (no atomics)."""
    pid = tl.program_id(0)
    tap = tl.program_id(1)
    k = tl.program_id(2)
    split = pid % splits
    pid_ct = pid // splits // ci_tiles
    pid_ci = pid // splits % ci_tiles
    for j in tl.static_range(NUM_TEACHERS):
        if HAS_W[j]:  # noqa: SIM102 -- a constexpr `if` and a runtime `if` do not merge in Triton
            if k == j:
                _grad_weight_one_teacher(
                    dzs[j], hs[j], gws[j], parts[j], pid_ct, pid_ci, split, tap, batch, split_batch, c_ins[j],
                    c_outs[j], heights[j], widths[j], s_dzs[j], s_hs[j], s_gws[j], KS[j], DOT_DTYPE[j], TF32[j],
                    SPLIT, BLOCK_CT[j], BLOCK_CI[j], BLOCK_N[j],
                )


@triton.jit
def _reduce_weight_block(part_ptr, gw_ptr, pid, splits, c_in, c_out, s_gw, KS: tl.constexpr, BLOCK_E: tl.constexpr):
    """grad_w over one block of BLOCK_E weight elements, in (C_t, tap, C_in) order: the fp32 partials of every
    split added in split order, written in the weight's dtype and strides."""
    numel = c_out * KS * KS * c_in
    offs = pid * BLOCK_E + tl.arange(0, BLOCK_E)
    if pid * BLOCK_E < numel:
        mask = offs < numel
        acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
        ptrs = part_ptr + offs
        for _ in range(splits):
            acc += tl.load(ptrs, mask=mask, other=0.0)
            ptrs += numel
        ci = offs % c_in
        tap = offs // c_in % (KS * KS)
        ct = offs // c_in // (KS * KS)
        ptrs = gw_ptr + ct * s_gw[0] + ci * s_gw[1] + (tap // KS) * s_gw[2] + (tap % KS) * s_gw[3]
        tl.store(ptrs, acc.to(gw_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _reduce_bias_block(bias_part_ptr, gb_ptr, pid, batch, c_out, BLOCK_RB: tl.constexpr, BLOCK_CB: tl.constexpr):
    """grad_bias[c] = sum_b bias_parts[b, c] for BLOCK_CB channels: BLOCK_RB samples at a time, each tile summed
    as a tree across the CTA's lanes (not one sample after another), tiles in sample order: deterministic."""
    offs_c = pid * BLOCK_CB + tl.arange(0, BLOCK_CB)
    if pid * BLOCK_CB < c_out:
        mask_c = offs_c < c_out
        acc = tl.zeros((BLOCK_CB,), dtype=tl.float32)
        for r0 in range(0, batch, BLOCK_RB):
            rows = r0 + tl.arange(0, BLOCK_RB)
            tile = tl.load(bias_part_ptr + rows[:, None].to(tl.int64) * c_out + offs_c[None, :],
                           mask=(rows < batch)[:, None] & mask_c[None, :], other=0.0)
            acc += tl.sum(tile, axis=0)
        tl.store(gb_ptr + offs_c, acc.to(gb_ptr.dtype.element_ty), mask=mask_c)


@_autotuned(WARPS["grad_reduce"], ["batch", "c_ins", "c_outs", "w_blocks", "splits", "s_gws", "KS", "HAS_W",
                                   "HAS_BIAS", "SPLIT", "BLOCK_CB"])
@triton.jit
def feed_grad_reduce_kernel(
    parts, bias_parts, gws, gbs, batch, c_ins, c_outs, s_gws, w_blocks, splits,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_RB: tl.constexpr, BLOCK_CB: tl.constexpr, NUM_TEACHERS: tl.constexpr,
):
    """Grid (w_blocks + max bias blocks, K), the second pass of the weight and bias gradients: programs below
    `w_blocks` sum the split partials of BLOCK_E weight elements (only when the weight pass was split), the rest
    reduce BLOCK_CB channels of the bias over the batch from the per-sample partials of the dz pass."""
    pid = tl.program_id(0)
    k = tl.program_id(1)
    for j in tl.static_range(NUM_TEACHERS):
        if k == j:
            if pid < w_blocks:
                if SPLIT and HAS_W[j]:
                    _reduce_weight_block(parts[j], gws[j], pid, splits, c_ins[j], c_outs[j], s_gws[j], KS[j],
                                         BLOCK_E)
            elif HAS_BIAS[j]:
                _reduce_bias_block(bias_parts[j], gbs[j], pid - w_blocks, batch, c_outs[j], BLOCK_RB, BLOCK_CB)


# ----------------------------------------------------------------------------------------------------------
# Host side: block sizes and launches. Tensors are passed as per-teacher tuples; `None` weights/biases are
# replaced by a dummy pointer and switched off through the HAS_W / HAS_BIAS constexprs.

_TORCH_TO_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
# Launchers in launch order (the forward, then the backward's); tests and probes read the list here.
KERNEL_NAMES = ("feed_forward_kernel", "feed_grad_preact_kernel", "feed_grad_input_kernel",
                "feed_grad_weight_kernel", "feed_grad_reduce_kernel")


@functools.cache
def _sm_count(device_type: str, index: int | None) -> int:
    """SMs of the CUDA device; elsewhere (the interpreter, compile-only probes) the H100's, the target."""
    if device_type == "cuda":
        return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()
                                                ).multi_processor_count
    return H100.sms


def _strides4(x):
    return tuple(int(s) for s in x.stride()) if x is not None else (0, 0, 0, 0)


def gemm_weight(weight):
    """The weight as the kernels read it: C_in innermost (stride 1) so every weight tile load is contiguous.
    1x1 and channels-last (OHWI) weights already are; a 3x3 OIHW weight is repacked (one copy per call;
    FEEDLoss keeps its heads channels-last so the trainer never pays it)."""
    if weight is None or weight.stride(1) == 1:
        return weight
    return weight.contiguous(memory_format=torch.channels_last)


def _signature(x):
    return None if x is None else (tuple(x.shape), tuple(x.stride()), x.dtype)


class _Plan:
    """Per-teacher launch parameters shared by the forward and backward launches; built once per signature
    (shapes, strides, dtypes, GEMM dtypes, precision) and cached, so a training step does no planning."""

    def __init__(self, h_sig, t_sig, w_sig, b_sig, dot_dtypes, tf32, sms):
        self.num = len(t_sig)
        self.batch = t_sig[0][0][0]
        self.c_ins = tuple(s[0][1] for s in h_sig)
        self.c_outs = tuple(t[0][1] for t in t_sig)
        self.heights = tuple(t[0][2] for t in t_sig)
        self.widths = tuple(t[0][3] for t in t_sig)
        self.positions = tuple(h * w for h, w in zip(self.heights, self.widths))
        self.has_w = tuple(w is not None for w in w_sig)
        self.has_bias = tuple(b is not None for b in b_sig)
        self.ks = tuple(w[0][-1] if w is not None else 1 for w in w_sig)
        self.dot_dtype = tuple(_TORCH_TO_TL[d] for d in dot_dtypes)
        self.dot_torch_dtype = tuple(dot_dtypes)
        # IEEE fp32 unless the caller opted into TF32; meaningless for bf16/fp16 operands, so False there.
        self.tf32 = tuple(bool(tf32) and d == torch.float32 for d in dot_dtypes)
        # The IEEE fp32 specialisation: float32 operands without TF32 GEMMs (a head without conv has none).
        # Its divisions and square roots are rounded to nearest, as the interpreter and the reference compute.
        self.exact = tuple(d == torch.float32 and not (t and has_w)
                           for d, t, has_w in zip(dot_dtypes, self.tf32, self.has_w))
        # Block sizes per head (kernels/tiling.py, which the cost model reads too).
        heads = [tiling.head_tiling(ci, c, p, d == torch.float32 and not t)
                 for ci, c, p, d, t in zip(self.c_ins, self.c_outs, self.positions, dot_dtypes, self.tf32)]
        for field in ("block_k", "block_c", "block_p", "single_tile", "block_ci", "block_co", "block_ct"):
            setattr(self, field, tuple(getattr(head, field) for head in heads))
        self.s_h = tuple(s[1] for s in h_sig)
        self.s_t = tuple(t[1] for t in t_sig)
        self.s_w = tuple(w[1] if w is not None else (0, 0, 0, 0) for w in w_sig)
        # Backward grids: input-gradient tiles over (C_in, B*HW), weight-gradient tiles over (C_t, C_in, tap).
        self.n_tiles = max(tiling.cdiv(self.batch * p, tiling.BLOCK_N) for p in self.positions)
        self.c_tiles = max(tiling.cdiv(c, b) for c, b in zip(self.c_ins, self.block_ci))
        self.ct_tiles = max(tiling.cdiv(c, b) for c, b in zip(self.c_outs, self.block_ct))
        self.taps = max((k * k for k, has in zip(self.ks, self.has_w) if has), default=1)
        # Too few weight-gradient tiles to fill the GPU (CIFAR: 27 for 132 SMs) -> the batch is split into
        # `splits` runs of `split_batch` whole samples, one CTA each; the reduce pass adds the fp32 partials.
        split = tiling.weight_split(self.batch, self.ct_tiles * self.c_tiles * self.taps * self.num,
                                    min(self.positions), sms) if any(self.has_w) else tiling.WeightSplit(1, self.batch)
        self.splits, self.split_batch, self.split = split.splits, split.split_batch, split.splits > 1
        self.w_blocks = max((tiling.cdiv(c * k * k * ci, tiling.BLOCK_E)
                             for c, k, ci, has in zip(self.c_outs, self.ks, self.c_ins, self.has_w) if has),
                            default=0) if self.split else 0
        # Bias gradient: BLOCK_CB channels per program, as few as it takes to give every SM a program.
        bias = tiling.bias_blocks(self.batch, sum(c for c, has in zip(self.c_outs, self.has_bias) if has), sms)
        self.block_cb, self.block_rb = bias.block_cb, bias.block_rb
        self.b_blocks = max((tiling.cdiv(c, self.block_cb) for c, has in zip(self.c_outs, self.has_bias) if has),
                            default=0)

    def head_classes(self) -> tuple[str, ...]:
        """Per teacher, what its GEMMs run on: "mma16" (bf16/fp16 tensor cores), "tf32", "fma" (IEEE fp32) or
        "none" (no head conv)."""
        return tuple("none" if not has_w else "tf32" if t else "fma" if d == torch.float32 else "mma16"
                     for has_w, d, t in zip(self.has_w, self.dot_torch_dtype, self.tf32))

    def maxnreg(self, kernel: str) -> int | None:
        """The launch's register cap (REGISTER_CAPS): None when no teacher's class has one."""
        caps = [REGISTER_CAPS.get(kernel, {}).get(c) for c in self.head_classes()]
        if all(cap is None for cap in caps):
            return None
        return max(cap or 255 for cap in caps)

    def teacher_constexprs(self) -> dict:
        return {"KS": self.ks, "HAS_W": self.has_w, "HAS_BIAS": self.has_bias, "DOT_DTYPE": self.dot_dtype,
                "TF32": self.tf32, "EXACT": self.exact}


@functools.lru_cache(maxsize=256)
def _cached_plan(h_sig, t_sig, w_sig, b_sig, dot_dtypes, tf32, sms) -> _Plan:
    return _Plan(h_sig, t_sig, w_sig, b_sig, dot_dtypes, tf32, sms)


def _plan(head_inputs, teachers, weights, biases, dot_dtypes, tf32) -> _Plan:
    device = teachers[0].device
    return _cached_plan(
        tuple(_signature(x) for x in head_inputs), tuple(_signature(x) for x in teachers),
        tuple(_signature(x) for x in weights), tuple(_signature(x) for x in biases), tuple(dot_dtypes), bool(tf32),
        _sm_count(device.type, device.index),
    )


def _or_dummy(tensors, dummy):
    return tuple(dummy if x is None else x for x in tensors)


def feed_forward(head_inputs, teachers, weights, biases, scales, dot_dtypes, tf32, negative_slope, eps):
    """-> terms (K, B) fp32, scales[k] * per-sample L1 sums, and stats (K, B, 3) fp32 for the backward.

    dot_dtypes[k]: the GEMM operand dtype of teacher k's head (torch dtype; `feed_fast.ops.head` decides it).
    tf32: run float32 GEMMs as TF32 (else IEEE fp32)."""
    weights = tuple(gemm_weight(w) for w in weights)
    plan = _plan(head_inputs, teachers, weights, biases, dot_dtypes, tf32)
    terms = teachers[0].new_empty((plan.num, plan.batch), dtype=torch.float32)
    stats = teachers[0].new_empty((plan.num, plan.batch, STATS), dtype=torch.float32)
    feed_forward_kernel[(plan.batch, plan.num)](
        tuple(head_inputs), tuple(teachers), _or_dummy(weights, terms), _or_dummy(biases, terms), terms, stats,
        plan.batch, tuple(float(s) for s in scales), float(negative_slope or 0.0), float(eps),
        plan.c_ins, plan.c_outs, plan.heights, plan.widths, plan.s_h, plan.s_t, plan.s_w,
        HAS_ACT=negative_slope is not None, BLOCK_C=plan.block_c, BLOCK_P=plan.block_p, BLOCK_K=plan.block_k,
        SINGLE_TILE=plan.single_tile, NUM_TEACHERS=plan.num, **plan.teacher_constexprs(),
        maxnreg=plan.maxnreg("forward"),
    )
    return terms, stats


def feed_backward(grad_terms, stats, head_inputs, teachers, weights, biases, scales, dot_dtypes, tf32,
                  negative_slope, eps):
    """-> (grad_head_inputs, grad_weights, grad_biases), tuples with None where a tensor was absent. Every
    gradient has its tensor's dtype and memory format (fp32 master weights get fp32 gradients directly)."""
    gemm_weights = tuple(gemm_weight(w) for w in weights)
    plan = _plan(head_inputs, teachers, gemm_weights, biases, dot_dtypes, tf32)
    grad_terms = grad_terms.to(torch.float32)
    grad_h = tuple(torch.empty_like(h) for h in head_inputs)  # keeps each dtype and memory format
    # dL/dz: for a teacher with a head conv, a channels-last scratch in the GEMM operand dtype (the GEMMs round
    # it to that dtype anyway); without one, dL/dz is the input gradient and is written there directly.
    dzs = tuple(
        torch.empty(tuple(h.shape[:1]) + tuple(t.shape[1:]), dtype=d, device=t.device,
                    memory_format=torch.channels_last) if has_w else g
        for h, t, g, d, has_w in zip(head_inputs, teachers, grad_h, plan.dot_torch_dtype, plan.has_w)
    )
    bias_parts = tuple(
        torch.empty((plan.batch, c), dtype=torch.float32, device=t.device) if has_b else None
        for t, c, has_b in zip(teachers, plan.c_outs, plan.has_bias)
    )
    s_dz = tuple(_strides4(d) for d in dzs)
    dummy = stats
    feed_grad_preact_kernel[(plan.batch, plan.num)](
        tuple(head_inputs), tuple(teachers), _or_dummy(gemm_weights, dummy), _or_dummy(biases, dummy), dzs,
        _or_dummy(bias_parts, dummy), grad_terms, stats, plan.batch, tuple(float(s) for s in scales),
        float(negative_slope or 0.0), float(eps), plan.c_ins, plan.c_outs, plan.heights, plan.widths,
        plan.s_h, plan.s_t, plan.s_w, s_dz, tuple(int(s) for s in grad_terms.stride()),
        HAS_ACT=negative_slope is not None, BLOCK_C=plan.block_c, BLOCK_P=plan.block_p, BLOCK_K=plan.block_k,
        NUM_TEACHERS=plan.num, **plan.teacher_constexprs(), maxnreg=plan.maxnreg("grad_preact"),
    )
    if any(plan.has_w):
        feed_grad_input_kernel[(plan.n_tiles, plan.c_tiles, plan.num)](
            dzs, _or_dummy(gemm_weights, dummy), grad_h, plan.batch, plan.c_ins, plan.c_outs, plan.heights,
            plan.widths, s_dz, plan.s_w, tuple(_strides4(g) for g in grad_h),
            KS=plan.ks, HAS_W=plan.has_w, DOT_DTYPE=plan.dot_dtype, TF32=plan.tf32,
            BLOCK_CI=plan.block_ci, BLOCK_N=(tiling.BLOCK_N,) * plan.num, BLOCK_K=plan.block_co,
            NUM_TEACHERS=plan.num, maxnreg=plan.maxnreg("grad_input"),
        )
    # Gradients in the caller's tensors' own dtype and layout, so autograd never has to cast or copy them.
    grad_w = tuple(torch.empty_like(w) if w is not None else None for w in weights)
    grad_b = tuple(torch.empty_like(b) if b is not None else None for b in biases)
    s_gw = tuple(_strides4(g) for g in grad_w)
    parts = tuple(
        torch.empty((plan.splits, c, k * k, ci), dtype=torch.float32, device=stats.device)
        if plan.split and has_w else None
        for c, k, ci, has_w in zip(plan.c_outs, plan.ks, plan.c_ins, plan.has_w)
    )
    if any(plan.has_w):
        feed_grad_weight_kernel[(plan.ct_tiles * plan.c_tiles * plan.splits, plan.taps, plan.num)](
            dzs, tuple(head_inputs), _or_dummy(grad_w, dummy), _or_dummy(parts, dummy), plan.batch,
            plan.split_batch, plan.c_ins, plan.c_outs, plan.heights, plan.widths, s_dz, plan.s_h, s_gw,
            plan.c_tiles, plan.splits,
            KS=plan.ks, HAS_W=plan.has_w, DOT_DTYPE=plan.dot_dtype, TF32=plan.tf32, SPLIT=plan.split,
            BLOCK_CT=plan.block_ct, BLOCK_CI=plan.block_ci, BLOCK_N=(tiling.BLOCK_N,) * plan.num,
            NUM_TEACHERS=plan.num, maxnreg=plan.maxnreg("grad_weight"),
        )
    if plan.split or any(plan.has_bias):
        feed_grad_reduce_kernel[(plan.w_blocks + plan.b_blocks, plan.num)](
            _or_dummy(parts, dummy), _or_dummy(bias_parts, dummy), _or_dummy(grad_w, dummy),
            _or_dummy(grad_b, dummy), plan.batch, plan.c_ins, plan.c_outs, s_gw, plan.w_blocks, plan.splits,
            KS=plan.ks, HAS_W=plan.has_w, HAS_BIAS=plan.has_bias, SPLIT=plan.split, BLOCK_E=tiling.BLOCK_E,
            BLOCK_RB=plan.block_rb, BLOCK_CB=plan.block_cb, NUM_TEACHERS=plan.num,
            maxnreg=plan.maxnreg("grad_reduce"),
        )
    return grad_h, grad_w, grad_b

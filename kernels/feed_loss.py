"""Fused FEED loss kernels: translator head (1x1/3x3 conv as an implicit GEMM, bias, LeakyReLU) +
per-sample L2 normalisation of head output and teacher map + L1 distance, forward and backward.

The math is the one in ../shared/FEED.md (and `feed_fast.reference`, the readable twin). Shapes, strides and
dtypes may differ per teacher: every launch takes per-teacher tuples and handles all K teachers at once
(`tl.static_range` over the teacher index selects each teacher's constexpr specialisation), so the number of
launches never depends on K.

Forward, one program per (sample, teacher): the head output y is recomputed tile by tile and never written.
When a sample fits one tile (CIFAR-sized maps) a single pass over memory does everything; otherwise pass 1
gathers the two norms and pass 2 recomputes y for the L1. Saved for backward: per-sample scalars only
(||y||, ||t||, <u, sign(u - v)>).

Backward (three launches): (1) per (sample, teacher), recompute y and write dz = dL/d(pre-activation) in
float32; (2) input gradient, the transposed conv of dz with W; (3) weight and bias gradients, reduced over the
batch in a fixed order, so results are deterministic (no atomics).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Triton's interpreter (3.8) computes tl.dot wrongly for bfloat16 operands. There the operands are rounded to
# the low-precision dtype as on a GPU, then multiplied in float32: the same products, exactly.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")

NORM_SCALE_FLOOR = tl.constexpr(1e-30)  # as feed_fast.reference.NORM_SCALE_FLOOR
STATS = 3  # per (teacher, sample): ||y|| (unclamped), ||t|| (unclamped), <u, sign(u - v)>


def _autotuned(kernel):
    """On a GPU, time each config the first time a set of teacher shapes is seen and keep the fastest. Every
    kernel here writes its outputs and never accumulates into them, so re-running a config is harmless.
    The interpreter has no warps to tune: kernels stay plain there."""
    if INTERPRETED:
        return kernel
    return triton.autotune(configs=AUTOTUNE_CONFIGS, key=AUTOTUNE_KEY)(kernel)


# Register pressure is high at 4 warps (the compile probe shows ~255 registers per thread), so 8 warps is
# the alternative; more configs would multiply the first-call compile time.
AUTOTUNE_CONFIGS = [triton.Config({}, num_warps=4), triton.Config({}, num_warps=8)]
AUTOTUNE_KEY = ["batch", "c_ins", "c_outs", "heights", "widths"]


@triton.jit
def _mma(a, b, acc, DOT_DTYPE: tl.constexpr):
    """acc + a @ b with operands rounded to DOT_DTYPE (bf16/fp16 tensor cores, or fp32) and fp32 accumulation."""
    a = a.to(DOT_DTYPE)
    b = b.to(DOT_DTYPE)
    if INTERPRETED:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def _head_preact(
    h_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width,
    s_hb, s_hc, s_hh, s_hw, s_wo, s_wi, s_wh, s_ww,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
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
        for tap in tl.static_range(KS * KS):
            ih = ph + (tap // KS - KS // 2)
            iw = pw + (tap % KS - KS // 2)
            valid_p = mask_p & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
            for k0 in range(0, c_in, BLOCK_K):
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
                acc = _mma(w, x, acc, DOT_DTYPE)
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
def _load_teacher(t_ptr, b, offs_c, offs_p, c_out, height, width, s_tb, s_tc, s_th, s_tw):
    mask = (offs_c < c_out)[:, None] & (offs_p < height * width)[None, :]
    ptrs = t_ptr + b.to(tl.int64) * s_tb + offs_c[:, None] * s_tc + (offs_p // width)[None, :] * s_th \
        + (offs_p % width)[None, :] * s_tw
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _running_sum_sq(x, scale, total):
    """One tile's update of a running L2 norm kept as scale * sqrt(total), scale = max|x| so far (floored at
    NORM_SCALE_FLOOR): squares of large features never overflow float32. Same math as reference.l2_normalize."""
    new_scale = tl.maximum(scale, tl.max(tl.max(tl.abs(x), axis=1), axis=0))
    ratio = scale / new_scale
    xs = x / new_scale
    return new_scale, total * ratio * ratio + tl.sum(tl.sum(xs * xs, axis=1), axis=0)


@triton.jit
def _clamped(norm, eps):
    # NaN-propagating max: a NaN norm must stay NaN, never become eps.
    return tl.maximum(norm, eps, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _tile(
    h_ptr, t_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width, s_h, s_t, s_w,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (channels x positions) tile of sample b: the head's pre-activation z and the teacher map t, fp32."""
    z = _head_preact(h_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width,
                     s_h[0], s_h[1], s_h[2], s_h[3], s_w[0], s_w[1], s_w[2], s_w[3],
                     KS, HAS_W, HAS_BIAS, DOT_DTYPE, BLOCK_C, BLOCK_P, BLOCK_K)
    t = _load_teacher(t_ptr, b, offs_c, offs_p, c_out, height, width, s_t[0], s_t[1], s_t[2], s_t[3])
    return z, t


@triton.jit
def _forward_one_teacher(
    h_ptr, t_ptr, w_ptr, bias_ptr, terms_ptr, stats_ptr, b, k, batch, slope, eps,
    c_in, c_out, height, width, s_h, s_t, s_w,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
):
    n_pos = height * width
    arange_c = tl.arange(0, BLOCK_C)
    arange_p = tl.arange(0, BLOCK_P)
    if SINGLE_TILE:
        # The whole sample lives in registers: one pass over memory.
        z, t = _tile(h_ptr, t_ptr, w_ptr, bias_ptr, b, arange_c, arange_p, c_in, c_out, height, width,
                     s_h, s_t, s_w, KS, HAS_W, HAS_BIAS, DOT_DTYPE, BLOCK_C, BLOCK_P, BLOCK_K)
        y = _activate(z, slope, HAS_ACT)
        scale_y, sum_y = _running_sum_sq(y, NORM_SCALE_FLOOR, 0.0)
        scale_t, sum_t = _running_sum_sq(t, NORM_SCALE_FLOOR, 0.0)
        norm_y = scale_y * tl.sqrt(sum_y)
        norm_t = scale_t * tl.sqrt(sum_t)
        u = y / _clamped(norm_y, eps)
        d = u - t / _clamped(norm_t, eps)
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
                             s_h, s_t, s_w, KS, HAS_W, HAS_BIAS, DOT_DTYPE, BLOCK_C, BLOCK_P, BLOCK_K)
                y = _activate(z, slope, HAS_ACT)
                scale_y, sum_y = _running_sum_sq(y, scale_y, sum_y)
                scale_t, sum_t = _running_sum_sq(t, scale_t, sum_t)
        norm_y = scale_y * tl.sqrt(sum_y)
        norm_t = scale_t * tl.sqrt(sum_t)
        inv_y = 1.0 / _clamped(norm_y, eps)
        inv_t = 1.0 / _clamped(norm_t, eps)
        acc_l1 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        acc_dot = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for p0 in range(0, n_pos, BLOCK_P):
            for c0 in range(0, c_out, BLOCK_C):
                offs_c = c0 + arange_c
                offs_p = p0 + arange_p
                z, t = _tile(h_ptr, t_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width,
                             s_h, s_t, s_w, KS, HAS_W, HAS_BIAS, DOT_DTYPE, BLOCK_C, BLOCK_P, BLOCK_K)
                u = _activate(z, slope, HAS_ACT) * inv_y
                d = u - t * inv_t
                acc_l1 += tl.sum(tl.abs(d), axis=1)
                acc_dot += tl.sum(u * _sign(d), axis=1)
        l1 = tl.sum(acc_l1, axis=0)
        dot = tl.sum(acc_dot, axis=0)
    row = k * batch + b
    tl.store(terms_ptr + row, l1)
    tl.store(stats_ptr + row * 3 + 0, norm_y)
    tl.store(stats_ptr + row * 3 + 1, norm_t)
    tl.store(stats_ptr + row * 3 + 2, dot)


@_autotuned
@triton.jit
def feed_forward_kernel(
    hs, ts, ws, biases, terms_ptr, stats_ptr, batch, slope, eps,
    c_ins, c_outs, heights, widths, s_hs, s_ts, s_ws,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    SINGLE_TILE: tl.constexpr, NUM_TEACHERS: tl.constexpr,
):
    """Grid (B, K): terms[k, b] = sum_i |u_i - v_i|, stats[k, b] = (||y||, ||t||, <u, sign(u - v)>)."""
    b = tl.program_id(0)
    k = tl.program_id(1)
    for j in tl.static_range(NUM_TEACHERS):
        if k == j:
            _forward_one_teacher(
                hs[j], ts[j], ws[j], biases[j], terms_ptr, stats_ptr, b, j, batch, slope, eps,
                c_ins[j], c_outs[j], heights[j], widths[j], s_hs[j], s_ts[j], s_ws[j],
                KS[j], HAS_W[j], HAS_BIAS[j], HAS_ACT, DOT_DTYPE[j], BLOCK_C[j], BLOCK_P[j], BLOCK_K[j],
                SINGLE_TILE[j],
            )


@triton.jit
def _grad_preact_one_teacher(
    h_ptr, t_ptr, w_ptr, bias_ptr, dz_ptr, grad_terms_ptr, stats_ptr, b, k, batch, slope, eps,
    c_in, c_out, height, width, s_h, s_t, s_w,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = k * batch + b
    g = tl.load(grad_terms_ptr + row)
    norm_y = tl.load(stats_ptr + row * 3 + 0)
    norm_t = tl.load(stats_ptr + row * 3 + 1)
    dot = tl.load(stats_ptr + row * 3 + 2)
    inv_y = 1.0 / _clamped(norm_y, eps)
    inv_t = 1.0 / _clamped(norm_t, eps)
    # Below eps the clamp holds the denominator constant: dL/dy = g * sign / eps, no projection term.
    proj = tl.where(norm_y >= eps, dot, 0.0)
    n_pos = height * width
    dz_base = dz_ptr + b.to(tl.int64) * c_out * n_pos
    for p0 in range(0, n_pos, BLOCK_P):
        for c0 in range(0, c_out, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            offs_p = p0 + tl.arange(0, BLOCK_P)
            z, t = _tile(h_ptr, t_ptr, w_ptr, bias_ptr, b, offs_c, offs_p, c_in, c_out, height, width,
                         s_h, s_t, s_w, KS, HAS_W, HAS_BIAS, DOT_DTYPE, BLOCK_C, BLOCK_P, BLOCK_K)
            u = _activate(z, slope, HAS_ACT) * inv_y
            dy = g * (_sign(u - t * inv_t) - u * proj) * inv_y
            if HAS_ACT:
                dy = tl.where(z > 0, dy, dy * slope)
            mask = (offs_c < c_out)[:, None] & (offs_p < n_pos)[None, :]
            tl.store(dz_base + offs_c[:, None] * n_pos + offs_p[None, :], dy, mask=mask)


@_autotuned
@triton.jit
def feed_grad_preact_kernel(
    hs, ts, ws, biases, dzs, grad_terms_ptr, stats_ptr, batch, slope, eps,
    c_ins, c_outs, heights, widths, s_hs, s_ts, s_ws,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ACT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    NUM_TEACHERS: tl.constexpr,
):
    """Grid (B, K): dz[k][b] = dL/dz (B, C_t, H, W contiguous, fp32), z the head's pre-activation."""
    b = tl.program_id(0)
    k = tl.program_id(1)
    for j in tl.static_range(NUM_TEACHERS):
        if k == j:
            _grad_preact_one_teacher(
                hs[j], ts[j], ws[j], biases[j], dzs[j], grad_terms_ptr, stats_ptr, b, j, batch, slope, eps,
                c_ins[j], c_outs[j], heights[j], widths[j], s_hs[j], s_ts[j], s_ws[j],
                KS[j], HAS_W[j], HAS_BIAS[j], HAS_ACT, DOT_DTYPE[j], BLOCK_C[j], BLOCK_P[j], BLOCK_K[j],
            )


@triton.jit
def _grad_input_one_teacher(
    dz_ptr, w_ptr, gh_ptr, pid_n, pid_c, batch, c_in, c_out, height, width, s_w, s_gh,
    KS: tl.constexpr, DOT_DTYPE: tl.constexpr,
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
        for tap in tl.static_range(KS * KS):
            # y[p] reads h[p + off]; so h[q] receives dz[q - off].
            oh = ph - (tap // KS - KS // 2)
            ow = pw - (tap % KS - KS // 2)
            valid = mask_n & (oh >= 0) & (oh < height) & (ow >= 0) & (ow < width)
            for k0 in range(0, c_out, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_k = offs_k < c_out
                w_t = tl.load(
                    w_ptr + offs_ci[:, None] * s_w[1] + offs_k[None, :] * s_w[0]
                    + (tap // KS) * s_w[2] + (tap % KS) * s_w[3],
                    mask=mask_ci[:, None] & mask_k[None, :], other=0.0,
                )
                dz = tl.load(
                    dz_ptr + bi[None, :] * c_out * n_pos + offs_k[:, None] * n_pos + (oh * width + ow)[None, :],
                    mask=mask_k[:, None] & valid[None, :], other=0.0,
                )
                acc = _mma(w_t, dz, acc, DOT_DTYPE)
        ptrs = gh_ptr + bi[None, :] * s_gh[0] + offs_ci[:, None] * s_gh[1] + ph[None, :] * s_gh[2] \
            + pw[None, :] * s_gh[3]
        tl.store(ptrs, acc.to(gh_ptr.dtype.element_ty), mask=mask_ci[:, None] & mask_n[None, :])


@_autotuned
@triton.jit
def feed_grad_input_kernel(
    dzs, ws, ghs, batch, c_ins, c_outs, heights, widths, s_ws, s_ghs,
    KS: tl.constexpr, HAS_W: tl.constexpr, DOT_DTYPE: tl.constexpr,
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
                    s_ws[j], s_ghs[j], KS[j], DOT_DTYPE[j], BLOCK_CI[j], BLOCK_N[j], BLOCK_K[j],
                )


@triton.jit
def _grad_weight_one_teacher(
    dz_ptr, h_ptr, gw_ptr, gb_ptr, pid_ct, pid_ci, tap, batch, c_in, c_out, height, width, s_h,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_CT: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n_pos = height * width
    total = batch * n_pos
    offs_ct = pid_ct * BLOCK_CT + tl.arange(0, BLOCK_CT)
    offs_ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    mask_ct = offs_ct < c_out
    mask_ci = offs_ci < c_in
    in_range = (pid_ct * BLOCK_CT < c_out) & (tap < KS * KS)
    do_weight = HAS_W & in_range & (pid_ci * BLOCK_CI < c_in)
    do_bias = HAS_BIAS & in_range & (pid_ci == 0) & (tap == 0)
    if do_weight | do_bias:
        dh = tap // KS - KS // 2
        dw = tap % KS - KS // 2
        acc = tl.zeros((BLOCK_CT, BLOCK_CI), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_CT,), dtype=tl.float32)
        # A fixed-order reduction over all (sample, position) pairs: deterministic, no atomics.
        for n0 in range(0, total, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < total
            bi = (offs_n // n_pos).to(tl.int64)
            p = offs_n % n_pos
            dz = tl.load(dz_ptr + bi[None, :] * c_out * n_pos + offs_ct[:, None] * n_pos + p[None, :],
                         mask=mask_ct[:, None] & mask_n[None, :], other=0.0)
            if do_bias:
                acc_b += tl.sum(dz, axis=1)
            if do_weight:
                ih = p // width + dh
                iw = p % width + dw
                valid = mask_n & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
                x_t = tl.load(h_ptr + bi[:, None] * s_h[0] + offs_ci[None, :] * s_h[1] + ih[:, None] * s_h[2]
                              + iw[:, None] * s_h[3], mask=valid[:, None] & mask_ci[None, :], other=0.0)
                acc = _mma(dz, x_t, acc, DOT_DTYPE)
        if do_weight:
            # grad_w is a contiguous (C_t, C_in, KS, KS) fp32 buffer.
            ptrs = gw_ptr + offs_ct[:, None] * (c_in * KS * KS) + offs_ci[None, :] * (KS * KS) + tap
            tl.store(ptrs, acc, mask=mask_ct[:, None] & mask_ci[None, :])
        if do_bias:
            tl.store(gb_ptr + offs_ct, acc_b, mask=mask_ct)


@_autotuned
@triton.jit
def feed_grad_weight_kernel(
    dzs, hs, gws, gbs, batch, c_ins, c_outs, heights, widths, s_hs, ci_tiles,
    KS: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_CT: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_N: tl.constexpr, NUM_TEACHERS: tl.constexpr,
):
    """Grid (max C_t tiles * max C_in tiles, max taps, K): grad_w[ct, ci, tap] = sum_{b,p} dz h, grad_bias."""
    pid = tl.program_id(0)
    tap = tl.program_id(1)
    k = tl.program_id(2)
    pid_ct = pid // ci_tiles
    pid_ci = pid % ci_tiles
    for j in tl.static_range(NUM_TEACHERS):
        if k == j:
            _grad_weight_one_teacher(
                dzs[j], hs[j], gws[j], gbs[j], pid_ct, pid_ci, tap, batch, c_ins[j], c_outs[j], heights[j],
                widths[j], s_hs[j], KS[j], HAS_W[j], HAS_BIAS[j], DOT_DTYPE[j], BLOCK_CT[j], BLOCK_CI[j],
                BLOCK_N[j],
            )


# ----------------------------------------------------------------------------------------------------------
# Host side: block sizes and launches. Tensors are passed as per-teacher tuples; `None` weights/biases are
# replaced by a dummy pointer and switched off through the HAS_W / HAS_BIAS constexprs.

_TORCH_TO_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _pow2_between(n: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(n)))


def _dot_dtype(student, weight):
    """GEMM operand dtype: bf16/fp16 tensor cores when student and weight share that dtype, else float32, so
    products are exact in the float32 accumulator either way. (FEEDLoss casts its weights like autocast.)"""
    if weight is not None and weight.dtype == student.dtype:
        return _TORCH_TO_TL[student.dtype]
    return tl.float32


def _strides4(x):
    return tuple(int(s) for s in x.stride()) if x is not None else (0, 0, 0, 0)


class _Plan:
    """Per-teacher launch parameters shared by the forward and backward launches."""

    def __init__(self, students, teachers, weights, biases, kernel_sizes):
        self.num = len(teachers)
        self.batch = int(teachers[0].shape[0])
        self.c_ins = tuple(int(s.shape[1]) for s in students)
        self.c_outs = tuple(int(t.shape[1]) for t in teachers)
        self.heights = tuple(int(t.shape[2]) for t in teachers)
        self.widths = tuple(int(t.shape[3]) for t in teachers)
        self.positions = tuple(h * w for h, w in zip(self.heights, self.widths))
        self.has_w = tuple(w is not None for w in weights)
        self.has_bias = tuple(b is not None for b in biases)
        self.ks = tuple(max(1, k) for k in kernel_sizes)
        self.dot_dtype = tuple(_dot_dtype(s, w) for s, w in zip(students, weights))
        self.block_c = tuple(_pow2_between(c, 16, 64) for c in self.c_outs)
        self.block_p = tuple(_pow2_between(p, 16, 64) for p in self.positions)
        self.block_k = tuple(_pow2_between(c, 16, 32) for c in self.c_ins)
        self.single_tile = tuple(
            c <= bc and p <= bp for c, p, bc, bp in zip(self.c_outs, self.positions, self.block_c, self.block_p)
        )
        self.s_h = tuple(_strides4(s) for s in students)
        self.s_t = tuple(_strides4(t) for t in teachers)
        self.s_w = tuple(_strides4(w) for w in weights)


def _or_dummy(tensors, dummy):
    return tuple(dummy if x is None else x for x in tensors)


def feed_forward(students, teachers, weights, biases, kernel_sizes, negative_slope, eps):
    """-> terms (K, B) fp32 per-sample L1 sums, stats (K, B, 3) fp32 for the backward."""
    plan = _Plan(students, teachers, weights, biases, kernel_sizes)
    device = teachers[0].device
    terms = teachers[0].new_empty((plan.num, plan.batch), dtype=torch.float32, device=device)
    stats = teachers[0].new_empty((plan.num, plan.batch, STATS), dtype=torch.float32, device=device)
    feed_forward_kernel[(plan.batch, plan.num)](
        tuple(students), tuple(teachers), _or_dummy(weights, terms), _or_dummy(biases, terms), terms, stats,
        plan.batch, float(negative_slope or 0.0), float(eps),
        plan.c_ins, plan.c_outs, plan.heights, plan.widths, plan.s_h, plan.s_t, plan.s_w,
        KS=plan.ks, HAS_W=plan.has_w, HAS_BIAS=plan.has_bias, HAS_ACT=negative_slope is not None,
        DOT_DTYPE=plan.dot_dtype, BLOCK_C=plan.block_c, BLOCK_P=plan.block_p, BLOCK_K=plan.block_k,
        SINGLE_TILE=plan.single_tile, NUM_TEACHERS=plan.num,
    )
    return terms, stats


def feed_backward(grad_terms, stats, students, teachers, weights, biases, kernel_sizes, negative_slope, eps):
    """-> (grad_students, grad_weights, grad_biases), tuples with None where a tensor was absent.
    grad_students keep each student's dtype and memory format; weight/bias grads are fp32."""
    plan = _Plan(students, teachers, weights, biases, kernel_sizes)
    grad_terms = grad_terms.to(torch.float32).contiguous()
    dzs = tuple(torch.empty((plan.batch, c, p), dtype=torch.float32, device=grad_terms.device)
                for c, p in zip(plan.c_outs, plan.positions))
    slope = float(negative_slope or 0.0)
    feed_grad_preact_kernel[(plan.batch, plan.num)](
        tuple(students), tuple(teachers), _or_dummy(weights, grad_terms), _or_dummy(biases, grad_terms), dzs,
        grad_terms, stats, plan.batch, slope, float(eps),
        plan.c_ins, plan.c_outs, plan.heights, plan.widths, plan.s_h, plan.s_t, plan.s_w,
        KS=plan.ks, HAS_W=plan.has_w, HAS_BIAS=plan.has_bias, HAS_ACT=negative_slope is not None,
        DOT_DTYPE=plan.dot_dtype, BLOCK_C=plan.block_c, BLOCK_P=plan.block_p, BLOCK_K=plan.block_k,
        NUM_TEACHERS=plan.num,
    )

    grad_students = []
    for s, dz, has_w in zip(students, dzs, plan.has_w):
        if has_w:
            grad_students.append(torch.empty_like(s))  # keeps the student's dtype and memory format
        else:  # no conv: dL/dh is dz itself
            grad_students.append(dz.view_as(s).to(dtype=s.dtype, memory_format=_memory_format(s)))
    if any(plan.has_w):
        block_n = 64
        block_ci = tuple(_pow2_between(c, 16, 64) for c in plan.c_ins)
        block_k = tuple(_pow2_between(c, 16, 32) for c in plan.c_outs)
        n_tiles = max(triton.cdiv(plan.batch * p, block_n) for p in plan.positions)
        c_tiles = max(triton.cdiv(c, b) for c, b in zip(plan.c_ins, block_ci))
        feed_grad_input_kernel[(n_tiles, c_tiles, plan.num)](
            dzs, _or_dummy(weights, grad_terms), tuple(grad_students), plan.batch,
            plan.c_ins, plan.c_outs, plan.heights, plan.widths, plan.s_w,
            tuple(_strides4(g) for g in grad_students),
            KS=plan.ks, HAS_W=plan.has_w, DOT_DTYPE=plan.dot_dtype,
            BLOCK_CI=block_ci, BLOCK_N=(block_n,) * plan.num, BLOCK_K=block_k, NUM_TEACHERS=plan.num,
        )

    grad_weights = tuple(
        torch.empty(tuple(w.shape), dtype=torch.float32, device=w.device) if w is not None else None
        for w in weights
    )
    grad_biases = tuple(
        torch.empty(tuple(b.shape), dtype=torch.float32, device=b.device) if b is not None else None
        for b in biases
    )
    if any(plan.has_w) or any(plan.has_bias):
        block_ct = tuple(_pow2_between(c, 16, 64) for c in plan.c_outs)
        block_ci = tuple(_pow2_between(c, 16, 64) for c in plan.c_ins)
        ct_tiles = max(triton.cdiv(c, b) for c, b in zip(plan.c_outs, block_ct))
        ci_tiles = max(triton.cdiv(c, b) for c, b in zip(plan.c_ins, block_ci))
        taps = max(k * k for k, has in zip(plan.ks, plan.has_w) if has) if any(plan.has_w) else 1
        feed_grad_weight_kernel[(ct_tiles * ci_tiles, taps, plan.num)](
            dzs, tuple(students), _or_dummy(grad_weights, grad_terms), _or_dummy(grad_biases, grad_terms),
            plan.batch, plan.c_ins, plan.c_outs, plan.heights, plan.widths, plan.s_h, ci_tiles,
            KS=plan.ks, HAS_W=plan.has_w, HAS_BIAS=plan.has_bias, DOT_DTYPE=plan.dot_dtype,
            BLOCK_CT=block_ct, BLOCK_CI=block_ci, BLOCK_N=(64,) * plan.num, NUM_TEACHERS=plan.num,
        )
    return tuple(grad_students), grad_weights, grad_biases


def _memory_format(x):
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format

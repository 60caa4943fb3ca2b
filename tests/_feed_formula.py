"""The FEED math written out again in float64 with explicit loops and einsum, independent of
feed_fast.ops.reference, plus the inputs the API tests share (test_feed_loss_api.py, test_feed_loss_validation.py)."""

from __future__ import annotations

import math

import torch

from feed_fast import feed_loss

# One teacher per tuple: (head-input channels, teacher channels, height, width, head) where head is
# None (no weights: the head input itself is compared), "2d" (a 1x1 conv given as a 2-D weight) or 1 / 3.
CONFIGS = {
    "k1_no_weights": [(3, 3, 5, 4, None)],
    "k1_2d_weight": [(4, 5, 3, 3, "2d")],
    "k2_kernels_3_1": [(4, 6, 5, 5, 3), (6, 3, 2, 7, 1)],
    "k3_mixed": [(5, 2, 3, 3, 3), (3, 7, 4, 6, 1), (2, 4, 1, 1, 3)],
}
BATCH = 3


# ----------------------------------------------------------------------------------------------------
# The independent float64 formula
# ----------------------------------------------------------------------------------------------------
def conv_same(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Stride-1 'same' convolution as a sum over kernel offsets of channel contractions."""
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    size = weight.shape[-1]
    pad = size // 2
    batch, channels, height, width = x.shape
    padded = x.new_zeros(batch, channels, height + 2 * pad, width + 2 * pad)
    padded[:, :, pad : pad + height, pad : pad + width] = x
    out = 0
    for i in range(size):
        for j in range(size):
            window = padded[:, :, i : i + height, j : j + width]
            out = out + torch.einsum("oc,bchw->bohw", weight[:, :, i, j], window)
    return out


def expected_terms(students, teachers, weights=None, biases=None, *, slope=None, eps=1e-12):
    """(K, B) float64 of mean_i |u_i - v_i| per teacher and sample (differentiable for non-zero maps)."""
    num = len(teachers)
    weights = weights if weights is not None else [None] * num
    biases = biases if biases is not None else [None] * num
    rows = []
    for s, t, w, b in zip(students, teachers, weights, biases):
        y = s.double()
        if w is not None:
            y = conv_same(y, w.double())
        if b is not None:
            y = y + b.double()[None, :, None, None]
        if slope is not None:
            y = torch.where(y >= 0, y, slope * y)
        y_flat = y.reshape(y.shape[0], -1)
        t_flat = t.detach().double().reshape(t.shape[0], -1)
        u = y_flat / torch.clamp(y_flat.pow(2).sum(1).sqrt(), min=eps)[:, None]
        v = t_flat / torch.clamp(t_flat.pow(2).sum(1).sqrt(), min=eps)[:, None]
        rows.append((u - v).abs().sum(1) / y_flat.shape[1])
    return torch.stack(rows)


def expected_loss(terms: torch.Tensor, teachers, beta: float, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return beta * terms
    if reduction == "mean":
        return beta * terms.mean(1).sum()
    numels = torch.tensor([t[0].numel() for t in teachers], dtype=terms.dtype)
    return beta * (terms * numels[:, None]).sum()


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------
def make_inputs(config, *, bias=True, dtype=torch.float32, seed=0, batch=BATCH):
    """Random students, teachers, weights, biases (all leaves) for a CONFIGS entry."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    students, teachers, weights, biases = [], [], [], []
    for c_in, c_t, h, w, head in config:
        students.append(rand(batch, c_in, h, w).requires_grad_())
        teachers.append(rand(batch, c_t, h, w))
        if head is None:
            weights.append(None)
        elif head == "2d":
            weights.append((rand(c_t, c_in) / math.sqrt(c_in)).requires_grad_())
        else:
            weights.append((rand(c_t, c_in, head, head) / math.sqrt(c_in * head * head)).requires_grad_())
        biases.append((0.1 * rand(c_t)).requires_grad_() if bias else None)
    if all(w is None for w in weights):
        weights = None
    if not bias:
        biases = None
    return students, teachers, weights, biases


def leaves(students, weights, biases):
    return [x for x in [*students, *(weights or []), *(biases or [])] if x is not None]


def grads_of(loss, tensors):
    total = loss.sum()
    return torch.autograd.grad(total, tensors, allow_unused=False)


def assert_matches_formula(students, teachers, weights, biases, *, slope, reduction, beta, rtol, atol):
    got = feed_loss(
        students,
        teachers,
        weights,
        biases,
        beta=beta,
        negative_slope=slope,
        reduction=reduction,
        backend="torch",
    )
    terms = expected_terms(students, teachers, weights, biases, slope=slope)
    want = expected_loss(terms, teachers, beta, reduction)
    assert got.dtype == torch.float32
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)

    params = leaves(students, weights, biases)
    got_grads = grads_of(got, params)
    want_grads = grads_of(want, params)
    for x, g, w in zip(params, got_grads, want_grads):
        assert g.dtype == x.dtype and g.shape == x.shape
        scale = w.abs().max().item() + 1e-30
        torch.testing.assert_close(g.double(), w.double(), rtol=rtol, atol=atol * scale)


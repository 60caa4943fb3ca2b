"""The fused Triton FEED kernels against a float64 reference, forward and every gradient.

On the CPU the kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
anything imports triton). The same tests run compiled on a GPU: `TRITON_INTERPRET=0 pytest -m gpu`.
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

from feed_fast import FEEDLoss, feed_loss

try:
    from feed_fast.kernels.feed_loss import pinned_config
except ImportError:  # no triton: every test here needs it anyway
    pinned_config = contextlib.nullcontext

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
pytestmark = pytest.mark.slow  # every kernel in Triton's interpreter, about 2 minutes
# The rule: the IEEE fp32 specialisation computes what the interpreter computes, operation by operation (IEEE
# GEMMs, divisions and square roots rounded to nearest: div.rn/sqrt.rn, checked in the PTX by
# tests/test_kernels_compile_for_gpu.py), so compiled and interpreted float32 results differ only in the order of
# sums (and in FMA contraction, which rounds less): the same float32 tolerance on both devices. bf16/fp16 GEMMs
# run on tensor cores with another summation order; their norms use the GPU's faster 2-ulp division, far below
# bf16's own rounding.
TOLERANCE = {("cpu", torch.float32): 2e-5, ("cuda", torch.float32): 2e-5,
             ("cpu", torch.bfloat16): 2e-2, ("cuda", torch.bfloat16): 3e-2,
             ("cpu", torch.float16): 5e-3, ("cuda", torch.float16): 1e-2}


def make_case(spec, dtype, device, seed=0, channels_last=False, bias=True, weight_dtype=None, batch=3):
    """spec: list of (C_in, C_t, H, W, kernel) per teacher; kernel 0 = no conv (C_in must equal C_t)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dt)

    students, teachers, weights, biases = [], [], [], []
    for c_in, c_t, h, w, k in spec:
        s = rand(batch, c_in, h, w)
        t = rand(batch, c_t, h, w)
        if channels_last:
            s, t = s.to(memory_format=torch.channels_last), t.to(memory_format=torch.channels_last)
        students.append(s)
        teachers.append(t)
        wd = weight_dtype or dtype
        weights.append(rand(c_t, c_in, k, k, dt=wd, scale=1 / math.sqrt(c_in * k * k)) if k else None)
        biases.append(rand(c_t, dt=wd, scale=0.1) if bias else None)
    return students, teachers, weights, biases


def loss_and_grads(students, teachers, weights, biases, backend, as_float64=False, upstream=None, **kw):
    def prep(x):
        if x is None:
            return None
        x = x.detach()
        if as_float64:
            x = x.double()
        return x.requires_grad_()

    s, t, w, b = ([prep(x) for x in group] for group in (students, teachers, weights, biases))
    out = feed_loss(s, t, w, b, backend=backend, **kw)
    leaves = [x for x in s + w + b if x is not None]
    grad_out = upstream if upstream is not None else torch.ones_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return out, grads, t


def assert_close(actual, expected, tol, what):
    actual, expected = actual.double().cpu(), expected.double().cpu()
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs().max() / scale
    assert err <= tol, f"{what}: max error {err:.3g} of the largest magnitude, tolerance {tol}"


def check_against_float64(case, dtype, device, reduction="none", **kw):
    students, teachers, weights, biases = case
    shape = (len(teachers), teachers[0].shape[0]) if reduction == "none" else ()
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(device)
    fused, fused_grads, _ = loss_and_grads(
        students, teachers, weights, biases, "triton", reduction=reduction, upstream=upstream, **kw
    )
    ref, ref_grads, _ = loss_and_grads(
        students, teachers, weights, biases, "torch", as_float64=True, reduction=reduction, upstream=upstream, **kw
    )
    assert fused.dtype == torch.float32
    tol = TOLERANCE[(device, dtype)]
    assert_close(fused, ref, tol, "loss")
    for i, (g, r) in enumerate(zip(fused_grads, ref_grads)):
        assert torch.isfinite(g).all(), f"gradient {i} has non-finite values"
        assert_close(g, r, tol, f"gradient {i}")
    return fused_grads


SPECS = {
    "one_3x3": [(5, 7, 4, 6, 3)],
    "one_1x1": [(6, 9, 5, 3, 1)],
    "two_mixed": [(5, 9, 4, 6, 3), (7, 17, 3, 3, 1)],
    "three_with_identity": [(5, 9, 4, 6, 3), (7, 17, 3, 3, 1), (6, 6, 5, 5, 0)],
    "four_teachers": [(3, 5, 2, 3, 1), (4, 6, 3, 3, 3), (5, 5, 1, 1, 0), (2, 19, 4, 4, 3)],
    # A sample larger than one tile (33 * 81 values): the two-pass forward and tiled backward.
    "multi_tile": [(40, 33, 9, 9, 3)],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("slope", [None, 0.1])
def test_matches_float64_reference_fp32(spec, slope, device):
    case = make_case(SPECS[spec], torch.float32, device, seed=hash(spec) % 1000)
    check_against_float64(case, torch.float32, device, negative_slope=slope, beta=3.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", ["two_mixed", "multi_tile"])
def test_bf16_and_fp16_inputs(spec, device):
    for dtype in (torch.bfloat16, torch.float16):
        case = make_case(SPECS[spec], dtype, device, seed=3)
        grads = check_against_float64(case, dtype, device, negative_slope=0.1)
        # Gradients come back in each input's own dtype.
        leaves = [x for group in case for x in group if x is not None and x is not case[1][0]]
        assert all(g.dtype == dtype for g in grads) and len(grads) > 0 and len(leaves) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_student_with_fp32_head(device):
    """Mixed dtypes: bf16 activations with fp32 parameters are multiplied in float32, as the contract says.
    (bf16 tolerance: the student's gradient is returned in bf16.)"""
    case = make_case(SPECS["two_mixed"], torch.bfloat16, device, seed=4, weight_dtype=torch.float32)
    grads = check_against_float64(case, torch.bfloat16, device, negative_slope=0.1)
    assert grads[0].dtype == torch.bfloat16 and grads[2].dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_channels_last_inputs_keep_their_layout(bias, device):
    case = make_case(SPECS["two_mixed"], torch.float32, device, seed=5, channels_last=True, bias=bias)
    check_against_float64(case, torch.float32, device, negative_slope=0.1)
    s = case[0][0].detach().requires_grad_()
    feed_loss([s, case[0][1]], case[1], case[2], case[3], backend="triton").backward()
    assert s.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions(reduction, device):
    case = make_case(SPECS["two_mixed"], torch.float32, device, seed=6)
    check_against_float64(case, torch.float32, device, reduction=reduction, beta=500.0)


@pytest.mark.parametrize("device", DEVICES)
def test_two_dim_weight_is_a_1x1_conv(device):
    s, t, w, b = make_case([(6, 9, 3, 4, 1)], torch.float32, device, seed=8)
    w2 = w[0][:, :, 0, 0].clone().requires_grad_()
    fused = feed_loss(s, t, [w2], b, backend="triton")
    fused.backward()
    ref = feed_loss(s, t, [w2.detach().double()[:, :, None, None]], [b[0].double()], backend="torch")
    assert_close(fused, ref, 1e-5, "loss")
    assert w2.grad.shape == (9, 6)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_maps_are_guarded_by_eps(device):
    """All-zero head output and teacher: finite loss, finite gradients, matching the reference."""
    s, t, w, _ = make_case([(4, 5, 3, 3, 3), (5, 5, 2, 2, 0)], torch.float32, device, seed=9, bias=False)
    s = [torch.zeros_like(x) for x in s]
    t = [t[0], torch.zeros_like(t[1])]
    case = (s, t, w, [None, None])
    check_against_float64(case, torch.float32, device, negative_slope=0.1)
    out, grads, _ = loss_and_grads(*case, "triton")
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("device", DEVICES)
def test_identical_maps_give_zero_loss_and_zero_gradient(device):
    t = make_case([(6, 6, 4, 5, 0)], torch.float32, device, seed=10)[1]
    s = [t[0].clone().requires_grad_()]
    out = feed_loss(s, t, backend="triton", reduction="none")
    out.sum().backward()
    assert out.abs().max() < 1e-6
    assert s[0].grad.abs().max() < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_teachers_never_get_gradient(device):
    s, t, w, b = make_case(SPECS["two_mixed"], torch.float32, device, seed=11)
    t = [x.clone().requires_grad_() for x in t]
    s = [x.clone().requires_grad_() for x in s]
    feed_loss(s, t, w, b, backend="triton").backward()
    assert all(x.grad is None for x in t)
    assert all(x.grad is not None for x in s)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("where", ["students", "teachers", "weights", "biases"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_gives_non_finite_loss(where, bad, device):
    case = list(make_case([(4, 5, 3, 3, 3)], torch.float32, device, seed=12))
    index = ["students", "teachers", "weights", "biases"].index(where)
    poisoned = case[index][0].clone()
    poisoned.view(-1)[1] = bad
    case[index] = [poisoned]
    out = feed_loss(*case, backend="triton", reduction="none")
    assert not torch.isfinite(out).all(), f"{bad} in {where} gave the finite loss {out}"


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_launch_equals_one_call_per_teacher(device):
    """Bitwise: the launch for K teachers and K launches of one compile the same per-teacher code (the autotune
    config is pinned, so two autotune keys cannot pick different warps and reduction orders)."""
    s, t, w, b = make_case(SPECS["four_teachers"], torch.float32, device, seed=13)
    with pinned_config():
        together = feed_loss(s, t, w, b, backend="triton", reduction="none", negative_slope=0.1)
        for k in range(4):
            alone = feed_loss(s[k], t[k], w[k], b[k], backend="triton", reduction="none", negative_slope=0.1)
            assert torch.equal(together[k], alone[0])


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    case = make_case(SPECS["multi_tile"], torch.float32, device, seed=14)
    with pinned_config():
        first = loss_and_grads(*case, "triton", negative_slope=0.1)
        second = loss_and_grads(*case, "triton", negative_slope=0.1)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def launch_plan(case, dtype=torch.float32):
    from feed_fast.kernels import feed_loss as kernels

    students, teachers, weights, biases = case
    return kernels._plan(students, teachers, [kernels.gemm_weight(w) for w in weights], biases,
                         [dtype] * len(teachers), False)


@pytest.mark.parametrize("device", DEVICES)
def test_weight_gradient_split_over_the_batch(device):
    """Small heads have too few weight-gradient tiles to fill the GPU: the batch is split over more CTAs and the
    reduce pass adds their fp32 partials in split order. Same gradients as float64, and deterministic."""
    case = make_case([(5, 7, 8, 8, 3), (6, 9, 8, 8, 1), (4, 4, 8, 8, 0)], torch.float32, device, seed=23, batch=8)
    plan = launch_plan(case)
    assert plan.splits == 4 and plan.split_batch == 2, (plan.splits, plan.split_batch)
    with pinned_config():
        first = check_against_float64(case, torch.float32, device, negative_slope=0.1)
        second = loss_and_grads(*case, "triton", reduction="none", negative_slope=0.1,
                                upstream=torch.randn(3, 8, generator=torch.Generator().manual_seed(7)).to(device))
    assert all(torch.equal(a, b) for a, b in zip(first, second[1]))


@pytest.mark.parametrize("device", DEVICES)
def test_bias_gradient_reduced_in_tiles_of_samples(device, monkeypatch):
    """The bias gradient sums per-sample partials a tile of samples at a time (here 2, so 3 samples take two
    tiles, the second one masked) and, on a GPU of few SMs, several channels per program (here 2 of 7 and 6)."""
    from feed_fast.kernels import feed_loss as kernels
    from feed_fast.kernels import tiling

    monkeypatch.setattr(tiling, "BIAS_TILE", 4)
    monkeypatch.setattr(kernels, "_sm_count", lambda *_: 4)
    kernels._cached_plan.cache_clear()
    try:
        case = make_case([(5, 7, 3, 3, 3), (6, 6, 2, 2, 0)], torch.float32, device, seed=24)
        plan = launch_plan(case)
        assert (plan.block_cb, plan.block_rb, plan.b_blocks) == (2, 2, 4)
        check_against_float64(case, torch.float32, device, negative_slope=0.1)
    finally:
        kernels._cached_plan.cache_clear()


@pytest.mark.parametrize("device", DEVICES)
def test_feed_loss_module_fused_matches_torch(device):
    torch.manual_seed(15)
    fused_module = FEEDLoss(8, [6, 10], beta=500.0, width=5, backend="triton").to(device)
    torch_module = FEEDLoss(8, [6, 10], beta=500.0, width=5, backend="torch").to(device)
    torch_module.load_state_dict(fused_module.state_dict())
    x = torch.randn(2, 8, 3, 3, device=device)
    teachers = [torch.randn(2, 6, 3, 3, device=device), torch.randn(2, 10, 3, 3, device=device)]
    a, b = fused_module(x, teachers), torch_module(x, teachers)
    a.total.backward()
    b.total.backward()
    assert_close(a.per_teacher, b.per_teacher, 1e-5, "per-teacher loss")
    for (name, p), q in zip(fused_module.named_parameters(), torch_module.parameters()):
        assert_close(p.grad, q.grad, 1e-4, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", ["three_with_identity", "multi_tile"])
def test_hybrid_backend_matches_float64_reference(spec, device, monkeypatch):
    """backend="hybrid": torch/cuDNN runs the head conv, the fused kernels do the rest. (cuDNN's fp32 convs
    follow torch.backends.cudnn.allow_tf32, True by default: switched off here to compare at fp32 accuracy.)"""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    case = make_case(SPECS[spec], torch.float32, device, seed=16)
    teachers = case[1]
    upstream = torch.randn(len(teachers), 3, generator=torch.Generator().manual_seed(2)).to(device)
    got, got_grads, _ = loss_and_grads(*case, "hybrid", reduction="none", upstream=upstream, negative_slope=0.1)
    ref, ref_grads, _ = loss_and_grads(
        *case, "torch", as_float64=True, reduction="none", upstream=upstream, negative_slope=0.1
    )
    tol = TOLERANCE[(device, torch.float32)]
    assert_close(got, ref, tol, "loss")
    for i, (g, r) in enumerate(zip(got_grads, ref_grads)):
        assert_close(g, r, tol, f"gradient {i}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", ["one_3x3", "multi_tile"])
@pytest.mark.parametrize("magnitude", [1e19, 1e30])
def test_huge_features_do_not_overflow_the_norm(spec, magnitude, device):
    """Squares of |x| > ~1e19 overflow float32: a plain sum of squares would make the norm inf and the loss a
    silently wrong finite number. Both backends scale by max|x| first and match float64."""
    students, teachers, weights, _ = make_case(SPECS[spec], torch.float32, device, seed=17, bias=False)
    students = [s * magnitude for s in students]
    teachers = [t * magnitude for t in teachers]
    expected = feed_loss([s.double() for s in students], [t.double() for t in teachers],
                         [w.double() for w in weights], backend="torch", reduction="none")
    for backend in ("torch", "triton"):
        got = feed_loss(students, teachers, weights, backend=backend, reduction="none")
        assert_close(got, expected, 1e-4, f"{backend} loss at magnitude {magnitude:g}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", ["three_with_identity", "multi_tile"])
def test_hybrid_backend_in_bf16(spec, device):
    """bf16 inputs: the conv (cuDNN on a GPU) returns bf16, rounded as eager autocast's conv is. The loss matches
    float64 to bf16 accuracy. Gradients are compared with float64 math on that same bf16 conv output: rounding
    it moves some u_i across v_i, which flips sign(u_i - v_i) in the exact L1 gradient (a few percent of the
    gradient's norm at these sizes, in eager autocast as here), so the exact float64 gradient is not the target."""
    import torch.nn.functional as F

    case = make_case(SPECS[spec], torch.bfloat16, device, seed=18)
    upstream = torch.randn(len(case[1]), 3, generator=torch.Generator().manual_seed(3)).to(device)
    got, got_grads, _ = loss_and_grads(*case, "hybrid", reduction="none", upstream=upstream, negative_slope=0.1)
    exact = loss_and_grads(*case, "torch", as_float64=True, reduction="none", upstream=upstream, negative_slope=0.1)
    assert got.dtype == torch.float32
    tol = TOLERANCE[(device, torch.bfloat16)]
    assert_close(got, exact[0], tol, "loss")

    students, teachers, weights, biases = ([x.detach().requires_grad_() if x is not None else None for x in group]
                                           for group in case)
    conv_outputs = [F.conv2d(s, w, padding=w.shape[-1] // 2).double() if w is not None else s.double()
                    for s, w in zip(students, weights)]
    ref = feed_loss(conv_outputs, [t.double() for t in teachers], None, [b.double() for b in biases],
                    negative_slope=0.1, reduction="none", backend="torch")
    leaves = [x for x in students + weights + biases if x is not None]
    ref_grads = torch.autograd.grad(ref, leaves, upstream.double())
    for i, (g, r) in enumerate(zip(got_grads, ref_grads)):
        assert g.dtype == torch.bfloat16
        assert_close(g, r, tol, f"gradient {i}")


@pytest.mark.parametrize("device", DEVICES)
def test_oihw_and_channels_last_weights_give_the_same_result_and_keep_their_layout(device):
    """The kernels read weights with C_in innermost: a channels-last (OHWI) weight as it is, an OIHW 3x3 one
    repacked. Same values in, the same loss and gradients out, and each weight gradient in its weight's layout."""
    s, t, w, b = make_case([(5, 7, 4, 6, 3), (6, 9, 3, 3, 3)], torch.float32, device, seed=19)
    oihw = [x.detach().contiguous().requires_grad_() for x in w]
    ohwi = [x.detach().to(memory_format=torch.channels_last).requires_grad_() for x in w]
    results = []
    for weights in (oihw, ohwi):
        heads = [x.detach().requires_grad_() for x in s]
        loss = feed_loss(heads, t, weights, b, negative_slope=0.1, backend="triton")
        results.append((loss, torch.autograd.grad(loss, [*heads, *weights])))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, c) for a, c in zip(results[0][1], results[1][1]))
    assert all(g.is_contiguous() for g in results[0][1][2:])
    assert all(g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous()
               for g in results[1][1][2:])


def autocast_case(device):
    s, t, w, b = make_case(SPECS["two_mixed"], torch.float32, device, seed=20)
    return [x.detach() for x in s], t, [x.detach() for x in w], [x.detach() for x in b]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["triton", "hybrid"])
def test_autocast_runs_the_head_gemms_in_the_autocast_dtype(backend, device):
    """As autocast casts a conv: float32 heads under bf16 autocast multiply bf16-rounded operands. Every backend
    applies the one rule (feed_fast.ops.head): fused and reference agree to float32 accuracy (hybrid to bf16, its
    conv output being bf16), and all differ from the float32 result."""
    s, t, w, b = autocast_case(device)
    kwargs = {"negative_slope": 0.1, "reduction": "none"}
    with torch.autocast(device, dtype=torch.bfloat16):
        reference = feed_loss(s, t, w, b, backend="torch", **kwargs)
        got = feed_loss(s, t, w, b, backend=backend, **kwargs)
    rounded = feed_loss([x.bfloat16() for x in s], t, [x.bfloat16() for x in w], b, backend="torch", **kwargs)
    plain = feed_loss(s, t, w, b, backend="torch", **kwargs)
    assert_close(reference, rounded, 1e-6, "reference under autocast vs bf16-rounded operands")
    assert_close(got, reference, 2e-5 if backend == "triton" else 2e-2, f"{backend} under autocast")
    assert (reference - plain).abs().max() > 1e-5, "autocast changed nothing: the GEMMs ran in float32"


@pytest.mark.parametrize("device", DEVICES)
def test_feed_loss_module_under_autocast_keeps_fp32_channels_last_heads(device):
    """FEEDLoss hands its fp32 master weights to the op as they are: the kernels cast in registers and write
    fp32 gradients in the weights' own (channels-last) layout, so nothing is cast or repacked per step."""
    torch.manual_seed(21)
    module = FEEDLoss(6, [5, 7], width=6, backend="triton").to(device)
    x = torch.randn(2, 6, 4, 4, device=device)
    teachers = [torch.randn(2, 5, 4, 4, device=device), torch.randn(2, 7, 4, 4, device=device)]
    with torch.autocast(device, dtype=torch.bfloat16):
        module(x, teachers).total.backward()
    for translator in module.translators:
        weight = translator.head.weight
        assert weight.dtype == weight.grad.dtype == torch.float32
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert weight.grad.is_contiguous(memory_format=torch.channels_last)
        assert translator.head.bias.grad.dtype == torch.float32


@pytest.mark.gpu
def test_tf32_only_when_allowed(monkeypatch):
    """The default is IEEE fp32; with torch.backends.cuda.matmul.allow_tf32 the GEMMs round to TF32: a
    different, less exact result, still within TF32's accuracy."""
    case = make_case(SPECS["multi_tile"], torch.float32, "cuda", seed=22)
    ref = loss_and_grads(*case, "torch", as_float64=True, negative_slope=0.1)[0]
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ieee = loss_and_grads(*case, "triton", negative_slope=0.1)[0]
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    tf32 = loss_and_grads(*case, "triton", negative_slope=0.1)[0]
    assert_close(ieee, ref, 1e-5, "IEEE fp32")
    assert_close(tf32, ref, 5e-3, "TF32")
    assert not torch.equal(ieee, tf32)

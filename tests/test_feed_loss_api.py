"""The public FEED loss API (`feed_loss`, `Translator`, `FEEDLoss`) on its torch backend.

Expected values come from `_feed_formula.expected_terms`: the FEED math written out again in float64 with
explicit loops and einsum, independent of feed_fast.ops.reference. Bad inputs are in test_feed_loss_validation.py,
the fused kernels in test_fused_kernels.py.
"""

from __future__ import annotations

import pytest
import torch
from _feed_formula import (
    BATCH,
    CONFIGS,
    assert_matches_formula,
    conv_same,
    expected_loss,
    expected_terms,
    grads_of,
    leaves,
    make_inputs,
)
from torch import nn

import feed_fast
from feed_fast import FEEDLoss, Translator, feed_loss


# ----------------------------------------------------------------------------------------------------
# Values and gradients against the formula
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("slope", [None, 0.1])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_torch_backend_matches_formula(config, bias, slope, reduction):
    students, teachers, weights, biases = make_inputs(CONFIGS[config], bias=bias, seed=len(config))
    assert_matches_formula(
        students, teachers, weights, biases, slope=slope, reduction=reduction, beta=2.5, rtol=1e-5, atol=1e-6
    )


def test_defaults_are_beta_one_and_mean_reduction():
    students, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"])
    got = feed_loss(students, teachers, weights, biases)
    want = expected_loss(expected_terms(students, teachers, weights, biases), teachers, 1.0, "mean")
    assert got.dim() == 0
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


def test_reduction_none_has_one_row_per_teacher_and_one_column_per_sample():
    students, teachers, weights, biases = make_inputs(CONFIGS["k3_mixed"], batch=4)
    out = feed_loss(students, teachers, weights, biases, reduction="none", backend="torch")
    assert out.shape == (3, 4)
    mean = feed_loss(students, teachers, weights, biases, reduction="mean", backend="torch")
    torch.testing.assert_close(out.mean(1).sum(), mean)


def test_single_tensors_mean_one_teacher():
    (s,), (t,), (w,), (b,) = make_inputs([(4, 3, 3, 5, 3)])
    single = feed_loss(s, t, w, b, reduction="none", backend="torch")
    listed = feed_loss([s], [t], [w], [b], reduction="none", backend="torch")
    tupled = feed_loss((s,), (t,), (w,), (b,), reduction="none", backend="torch")
    assert single.shape == (1, BATCH)
    torch.testing.assert_close(single, listed)
    torch.testing.assert_close(single, tupled)


def test_two_dimensional_weight_equals_its_1x1_conv():
    (s,), (t,), (w,), (b,) = make_inputs(CONFIGS["k1_2d_weight"])
    flat = feed_loss(s, t, w, b, negative_slope=0.1, reduction="none", backend="torch")
    conv = feed_loss(s, t, w[:, :, None, None], b, negative_slope=0.1, reduction="none", backend="torch")
    torch.testing.assert_close(flat, conv)


def test_auto_backend_on_cpu_is_the_torch_backend():
    students, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"])
    auto = feed_loss(
        students, teachers, weights, biases, negative_slope=0.1, reduction="none", backend="auto"
    )
    torch_out = feed_loss(
        students, teachers, weights, biases, negative_slope=0.1, reduction="none", backend="torch"
    )
    assert torch.equal(auto, torch_out)


def test_gradcheck_torch_backend_in_float64():
    students, teachers, weights, biases = make_inputs(
        [(3, 2, 3, 3, 3), (2, 3, 2, 3, 1)], dtype=torch.float64, batch=2, seed=3
    )
    num = len(teachers)

    def loss_of(*tensors):
        s, w, b = tensors[:num], tensors[num : 2 * num], tensors[2 * num :]
        return feed_loss(
            list(s),
            teachers,
            list(w),
            list(b),
            beta=3.0,
            negative_slope=0.1,
            reduction="none",
            backend="torch",
        )

    inputs = (*students, *weights, *biases)
    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# Degenerate maps
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1e-12, 0.5, 1e3])
def test_eps_is_a_floor_on_the_norms(eps):
    """eps = 1e3 is above every norm here (u = y / eps, v = t / eps); 0.5 is above only the norm of the
    shrunken teacher sample (about 0.01) and below all others (about 3 to 12)."""
    students, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"], seed=5)
    teachers[0][0] *= 1e-3
    norms = torch.stack([t.flatten(1).norm(dim=1) for t in teachers])
    assert norms[0, 0] < 0.5 < norms.flatten()[1:].min()
    got = feed_loss(students, teachers, weights, biases, eps=eps, reduction="none", backend="torch")
    want = expected_terms(students, teachers, weights, biases, eps=eps)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-8)
    params = leaves(students, weights, biases)
    for g, w in zip(grads_of(got, params), grads_of(want, params)):
        scale = w.abs().max().item() + 1e-30
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("slope", [None, 0.1])
def test_zero_maps_give_finite_loss_and_gradients(slope):
    """Sample 0: teacher all zero. Sample 1: student (so y) all zero. Sample 2: both zero (term 0)."""
    students, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"], bias=False)
    with torch.no_grad():
        for s, t in zip(students, teachers):
            t[0].zero_()
            s[1].zero_()
            t[2].zero_()
            s[2].zero_()
    out = feed_loss(
        students, teachers, weights, biases, negative_slope=slope, reduction="none", backend="torch"
    )
    want = expected_terms(students, teachers, weights, biases, slope=slope)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-7)
    assert (out[:, 2] == 0).all()
    # With one map zero the distance is mean |other map normalized|: positive, not zero.
    assert (out[:, :2] > 0).all()
    for g in grads_of(out, leaves(students, weights, biases)):
        assert torch.isfinite(g).all()


def test_identical_maps_give_zero_loss_and_zero_gradient():
    students, _teachers, weights, biases = make_inputs(CONFIGS["k3_mixed"])
    teacher_like = []
    with torch.no_grad():
        terms_y = []
        for s, w, b in zip(students, weights, biases):
            y = conv_same(s.double(), w.double()) + b.double()[None, :, None, None]
            terms_y.append(y)
        # A positive rescale changes nothing after normalization.
        teacher_like = [(2.5 * y).float() for y in terms_y]
    out = feed_loss(students, teacher_like, weights, biases, beta=500.0, reduction="none", backend="torch")
    assert out.abs().max().item() < 1e-3  # beta 500 times float32 rounding of unit-norm maps
    same = feed_loss([students[0]], [students[0].detach().clone()], backend="torch")
    assert same.item() == 0.0
    (g,) = torch.autograd.grad(same, [students[0]])
    assert torch.isfinite(g).all() and g.abs().max().item() == 0.0


# ----------------------------------------------------------------------------------------------------
# Memory formats, dtypes, teacher gradients
# ----------------------------------------------------------------------------------------------------
def test_channels_last_inputs_give_the_same_loss_and_gradients():
    students, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"])
    cl_students = [s.detach().to(memory_format=torch.channels_last).requires_grad_() for s in students]
    cl_teachers = [t.to(memory_format=torch.channels_last) for t in teachers]
    assert not cl_students[0].is_contiguous()
    kwargs = {"negative_slope": 0.1, "reduction": "none", "backend": "torch"}
    base = feed_loss(students, teachers, weights, biases, **kwargs)
    cl = feed_loss(cl_students, cl_teachers, weights, biases, **kwargs)
    torch.testing.assert_close(cl, base, rtol=1e-5, atol=1e-7)
    base_grads = grads_of(base, students)
    cl_grads = grads_of(cl, cl_students)
    for g_cl, g in zip(cl_grads, base_grads):
        torch.testing.assert_close(g_cl, g, rtol=1e-5, atol=1e-7)
    assert_matches_formula(
        cl_students, cl_teachers, weights, biases, slope=0.1, reduction="mean", beta=1.0, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_return_float32(low):
    students, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"], dtype=low)
    out = feed_loss(students, teachers, weights, biases, negative_slope=0.1, backend="torch")
    assert out.dtype == torch.float32
    # Arithmetic is float32 on the exact low-precision values: the float64 formula on them agrees closely.
    want = expected_loss(
        expected_terms(students, teachers, weights, biases, slope=0.1), teachers, 1.0, "mean"
    )
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    for x, g in zip(leaves(students, weights, biases), grads_of(out, leaves(students, weights, biases))):
        assert g.dtype == low and torch.isfinite(g.float()).all()


def test_mixed_dtypes_between_arguments():
    """bf16 features, fp16 teachers, fp32 weights (the AMP case): float32 out, matches the formula."""
    students, teachers, weights, biases = make_inputs(CONFIGS["k3_mixed"])
    students = [s.detach().bfloat16().requires_grad_() for s in students]
    teachers = [t.half() for t in teachers]
    assert_matches_formula(
        students, teachers, weights, biases, slope=0.1, reduction="mean", beta=1.0, rtol=1e-5, atol=1e-6
    )


def test_teachers_requiring_grad_get_no_gradient():
    students, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"])
    leaf_teacher = teachers[0].clone().requires_grad_()
    producer = nn.Conv2d(2, teachers[1].shape[1], 1)
    teacher_from_module = producer(torch.randn(BATCH, 2, *teachers[1].shape[2:]))
    assert teacher_from_module.requires_grad
    out = feed_loss(students, [leaf_teacher, teacher_from_module], weights, biases, backend="torch")
    out.backward()
    assert leaf_teacher.grad is None
    assert producer.weight.grad is None and producer.bias.grad is None
    assert all(s.grad is not None for s in students)


# ----------------------------------------------------------------------------------------------------
# NaN / Inf: never a finite wrong number
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("argument", ["students", "teachers", "weights", "biases"])
def test_nan_or_inf_in_any_input_gives_a_non_finite_loss(argument, bad, reduction):
    students, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"])
    inputs = {"students": students, "teachers": teachers, "weights": weights, "biases": biases}
    with torch.no_grad():
        target = inputs[argument][1]
        target.view(-1)[target.numel() // 2] = bad
    out = feed_loss(
        students, teachers, weights, biases, negative_slope=0.1, reduction=reduction, backend="torch"
    )
    if reduction == "none":
        assert torch.isfinite(out[0]).all(), "teacher 0 is clean and must keep its finite terms"
        assert not torch.isfinite(out[1]).all()
    else:
        assert not torch.isfinite(out).item()


# ----------------------------------------------------------------------------------------------------
# Translator
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("final_kernel_size", [1, 3])
def test_translator_maps_student_to_teacher_channels(final_kernel_size):
    translator = Translator(4, 7, 5, final_kernel_size=final_kernel_size)
    x = torch.randn(2, 4, 6, 3)
    assert translator(x).shape == (2, 7, 6, 3)
    assert translator.forward_body(x).shape == (2, 5, 6, 3)
    assert translator.head.kernel_size == (final_kernel_size, final_kernel_size)
    assert translator.head.padding == (final_kernel_size // 2, final_kernel_size // 2)


def test_translator_defaults_follow_ft():
    translator = Translator(6, 9)
    convs = [m for m in translator.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(6, 6), (6, 9), (9, 9)]  # width = out
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) and c.bias is not None for c in convs)
    acts = [m for m in translator.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 2 and all(a.negative_slope == 0.1 for a in acts)
    assert translator.head_slope == 0.1
    assert not any(isinstance(m, nn.BatchNorm2d) for m in translator.modules())


def test_translator_forward_is_body_head_then_leaky_relu():
    translator = Translator(3, 4, negative_slope=0.2)
    x = torch.randn(2, 3, 4, 4)
    want = nn.functional.leaky_relu(translator.head(translator.forward_body(x)), 0.2)
    torch.testing.assert_close(translator(x), want)
    assert (translator(x) < 0).any()  # the slope lets negatives through, scaled


def test_translator_options_batch_norm_and_no_final_activation():
    translator = Translator(3, 4, 8, batch_norm=True, final_activation=False)
    norms = [m for m in translator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [3, 8]
    body_convs = [m for m in translator.body if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in body_convs)  # BatchNorm's shift makes a conv bias redundant
    assert translator.head.bias is not None
    assert translator.head_slope is None
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(translator(x), translator.head(translator.forward_body(x)))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (
            {"in_channels": 3, "out_channels": 4, "final_kernel_size": 5},
            r"final_kernel_size must be 1 or 3, got 5",
        ),
        ({"in_channels": 0, "out_channels": 4}, r"in_channels must be a positive int, got 0"),
        ({"in_channels": 3, "out_channels": 2.0}, r"out_channels must be a positive int, got 2.0"),
    ],
)
def test_translator_rejects_bad_configuration(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Translator(**kwargs)


# ----------------------------------------------------------------------------------------------------
# FEEDLoss
# ----------------------------------------------------------------------------------------------------
def full_translator_loss(module: FEEDLoss, student_feature, teacher_features):
    """The unfused path: run every translator completely, then the formula with no head conv."""
    outputs = [tr(student_feature) for tr in module.translators]
    terms = expected_terms(outputs, teacher_features, eps=module.eps)
    per_teacher = module.beta * terms.mean(1)
    return per_teacher.sum(), per_teacher


FEED_LOSS_OPTIONS = {
    "defaults": {},
    "kernel1_width8": {"final_kernel_size": 1, "width": 8},
    "batch_norm": {"batch_norm": True},
    "no_final_activation": {"final_activation": False, "negative_slope": 0.2},
}


@pytest.mark.parametrize("options", list(FEED_LOSS_OPTIONS))
def test_feed_loss_module_equals_full_translators_then_loss(options):
    torch.manual_seed(0)
    module = FEEDLoss(5, [4, 7, 3], beta=500.0, backend="torch", **FEED_LOSS_OPTIONS[options])
    student_feature = torch.randn(3, 5, 4, 4, requires_grad=True)
    teacher_features = [torch.randn(3, c, 4, 4) for c in (4, 7, 3)]

    out = module(student_feature, teacher_features)
    assert isinstance(out, feed_fast.FEEDLossOutput)
    assert out.total.shape == () and out.per_teacher.shape == (3,)
    torch.testing.assert_close(out.per_teacher.sum(), out.total)

    want_total, want_per_teacher = full_translator_loss(module, student_feature, teacher_features)
    torch.testing.assert_close(out.total.double(), want_total, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.per_teacher.double(), want_per_teacher, rtol=1e-5, atol=1e-5)

    params = [student_feature, *module.parameters()]
    got = torch.autograd.grad(out.total, params)
    want = torch.autograd.grad(want_total, params)
    for g, w in zip(got, want):
        scale = w.abs().max().item() + 1e-30
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-5 * scale)


def test_feed_loss_module_defaults():
    module = FEEDLoss(4, [6, 2])
    assert module.beta == 500.0 and module.eps == 1e-12 and module.backend == "auto"
    assert len(module.translators) == 2
    assert [tr.out_channels for tr in module.translators] == [6, 2]
    assert [tr.width for tr in module.translators] == [6, 2]  # width = the teacher's channels, as FT
    assert all(tr.head.kernel_size == (3, 3) for tr in module.translators)


def test_feed_loss_module_takes_one_tensor_for_one_teacher():
    torch.manual_seed(1)
    module = FEEDLoss(3, [2], backend="torch")
    x, t = torch.randn(2, 3, 3, 3), torch.randn(2, 2, 3, 3)
    torch.testing.assert_close(module(x, t).total, module(x, [t]).total)




def test_feed_loss_module_under_autocast_returns_float32():
    """Under CPU autocast the body runs in bf16 and the heads are cast like autocast casts a conv."""
    torch.manual_seed(2)
    module = FEEDLoss(4, [3, 5], backend="torch")
    student_feature = torch.randn(2, 4, 3, 3)
    teacher_features = [torch.randn(2, 3, 3, 3), torch.randn(2, 5, 3, 3)]
    plain = module(student_feature, teacher_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module(student_feature, teacher_features)
    assert mixed.total.dtype == torch.float32 and mixed.per_teacher.dtype == torch.float32
    torch.testing.assert_close(mixed.per_teacher, plain.per_teacher, rtol=5e-2, atol=0.0)
    mixed.total.backward()
    head = module.translators[1].head
    assert head.weight.grad is not None and head.weight.grad.dtype == torch.float32
    assert torch.isfinite(head.weight.grad).all()



# ----------------------------------------------------------------------------------------------------
# The argument's name: head_inputs, with students= as a deprecated alias for one release
# ----------------------------------------------------------------------------------------------------
def test_head_inputs_by_keyword_and_the_deprecated_students_alias():
    head_inputs, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"])
    positional = feed_loss(head_inputs, teachers, weights, biases, reduction="none", backend="torch")
    keyword = feed_loss(head_inputs=head_inputs, teachers=teachers, weights=weights, biases=biases,
                        reduction="none", backend="torch")
    with pytest.warns(DeprecationWarning, match=r"students=\.\.\.\) is deprecated.*head_inputs"):
        alias = feed_loss(students=head_inputs, teachers=teachers, weights=weights, biases=biases,
                          reduction="none", backend="torch")
    assert torch.equal(keyword, positional) and torch.equal(alias, positional)


def test_head_inputs_and_students_together_is_an_error():
    head_inputs, teachers, _, _ = make_inputs(CONFIGS["k1_no_weights"])
    with pytest.raises(TypeError, match=r"both head_inputs and students"):
        feed_loss(head_inputs, teachers, students=head_inputs, backend="torch")

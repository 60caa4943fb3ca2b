"""Every bad input to `feed_loss` and `FEEDLoss` fails before any work with a clear error naming the argument,
the teacher index and the expected vs. given shape/dtype: one table of cases, one assertion per case."""

from __future__ import annotations

import re

import pytest
import torch
from _feed_formula import CONFIGS, make_inputs

from feed_fast import FEEDLoss, feed_loss


def valid_args():
    head_inputs, teachers, weights, biases = make_inputs(CONFIGS["k2_kernels_3_1"])
    return {"head_inputs": head_inputs, "teachers": teachers, "weights": weights, "biases": biases}


def replace(args, name, k, value):
    args[name] = list(args[name])
    args[name][k] = value
    return args


def _k_mismatch(name):
    def build(a):
        a[name] = a[name][:1]
        return a

    return build


ERROR_CASES = {
    # name: (mutation of valid K=2 args, extra kwargs, exception, pattern that must be in the message)
    "head_inputs_fewer_than_teachers": (
        _k_mismatch("head_inputs"),
        {},
        ValueError,
        r"head_inputs has 1 entries but teachers has 2",
    ),
    "weights_fewer_than_teachers": (
        _k_mismatch("weights"),
        {},
        ValueError,
        r"weights has 1 entries but teachers has 2",
    ),
    "biases_fewer_than_teachers": (
        _k_mismatch("biases"),
        {},
        ValueError,
        r"biases has 1 entries but teachers has 2",
    ),
    "teachers_fewer_than_head_inputs": (
        _k_mismatch("teachers"),
        {},
        ValueError,
        r"head_inputs has 2 entries but teachers has 1",
    ),
    "empty_teacher_list": (
        lambda a: {**a, "teachers": [], "head_inputs": [], "weights": None, "biases": None},
        {},
        ValueError,
        r"teachers must hold at least one tensor",
    ),
    "teacher_batch_mismatch": (
        lambda a: replace(a, "teachers", 1, a["teachers"][1][:2]),
        {},
        ValueError,
        r"teachers\[1\] has batch size 2, expected 3",
    ),
    "head_input_batch_mismatch": (
        lambda a: replace(a, "head_inputs", 1, a["head_inputs"][1][:2]),
        {},
        ValueError,
        r"head_inputs\[1\] has batch size 2, expected 3",
    ),
    "spatial_mismatch": (
        lambda a: replace(a, "head_inputs", 1, torch.randn(3, 6, 2, 6)),
        {},
        ValueError,
        r"head_inputs\[1\] has spatial size \(2, 6\), expected \(2, 7\)",
    ),
    "channels_without_weights": (
        lambda a: {**a, "head_inputs": [torch.randn(3, 6, 5, 5), torch.randn(3, 5, 2, 7)], "weights": None},
        {},
        ValueError,
        r"head_inputs\[1\] has 5 channels but teachers\[1\] has 3",
    ),
    "weight_channel_mismatch": (
        lambda a: replace(a, "weights", 1, torch.randn(3, 4, 1, 1)),
        {},
        ValueError,
        r"weights\[1\] has shape \(3, 4, 1, 1\), expected \(3, 6, 1, 1\)",
    ),
    "weight_out_channel_mismatch": (
        lambda a: replace(a, "weights", 0, torch.randn(5, 4, 3, 3)),
        {},
        ValueError,
        r"weights\[0\] has shape \(5, 4, 3, 3\), expected \(6, 4, 3, 3\)",
    ),
    "kernel_size_5": (
        lambda a: replace(a, "weights", 1, torch.randn(3, 6, 5, 5)),
        {},
        ValueError,
        r"weights\[1\] must be \(3, 6, k, k\) with k in \(1, 3\).*got shape \(3, 6, 5, 5\)",
    ),
    "kernel_not_square": (
        lambda a: replace(a, "weights", 1, torch.randn(3, 6, 1, 3)),
        {},
        ValueError,
        r"weights\[1\] must be .*got shape \(3, 6, 1, 3\)",
    ),
    "weight_3d": (
        lambda a: replace(a, "weights", 0, torch.randn(6, 4, 3)),
        {},
        ValueError,
        r"weights\[0\] must be .*got shape \(6, 4, 3\)",
    ),
    "bias_wrong_length": (
        lambda a: replace(a, "biases", 1, torch.randn(4)),
        {},
        ValueError,
        r"biases\[1\] has shape \(4\), expected \(3,\)",
    ),
    "bias_2d": (
        lambda a: replace(a, "biases", 0, torch.randn(6, 1)),
        {},
        ValueError,
        r"biases\[0\] has shape \(6, 1\), expected \(6,\)",
    ),
    "teacher_3d": (
        lambda a: replace(a, "teachers", 1, torch.randn(3, 2, 7)),
        {},
        ValueError,
        r"teachers\[1\] must be 4-D \(B, C, H, W\), got shape \(3, 2, 7\)",
    ),
    "head_input_3d": (
        lambda a: replace(a, "head_inputs", 1, torch.randn(3, 6, 14)),
        {},
        ValueError,
        r"head_inputs\[1\] must be 4-D",
    ),
    # Empty maps have no norm: 0/0 losses before, and torch's conv2d mis-shapes zero input channels.
    "teacher_no_channels": (
        lambda a: replace(a, "teachers", 1, torch.randn(3, 0, 2, 7)),
        {},
        ValueError,
        r"teachers\[1\] has shape \(3, 0, 2, 7\); channels, height and width must be >= 1",
    ),
    "head_input_no_channels": (
        lambda a: replace(a, "head_inputs", 1, torch.randn(3, 0, 2, 7)),
        {},
        ValueError,
        r"head_inputs\[1\] has shape \(3, 0, 2, 7\); channels, height and width must be >= 1",
    ),
    "empty_spatial": (
        lambda a: {
            **a,
            "head_inputs": [a["head_inputs"][0], torch.randn(3, 6, 0, 7)],
            "teachers": [a["teachers"][0], torch.randn(3, 3, 0, 7)],
        },
        {},
        ValueError,
        r"teachers\[1\] has shape \(3, 3, 0, 7\); channels, height and width must be >= 1",
    ),
    "empty_batch": (
        lambda a: {
            "head_inputs": [s[:0] for s in a["head_inputs"]],
            "teachers": [t[:0] for t in a["teachers"]],
            "weights": a["weights"],
            "biases": a["biases"],
        },
        {},
        ValueError,
        r"teachers\[0\] has batch size 0",
    ),
    "unknown_reduction": (lambda a: a, {"reduction": "avg"}, ValueError, r"reduction must be one of .*'avg'"),
    "unknown_backend": (lambda a: a, {"backend": "cuda"}, ValueError, r"backend must be one of .*'cuda'"),
    "eps_zero": (lambda a: a, {"eps": 0.0}, ValueError, r"eps must be > 0, got 0.0"),
    "eps_negative": (lambda a: a, {"eps": -1e-12}, ValueError, r"eps must be > 0"),
    "eps_nan": (lambda a: a, {"eps": float("nan")}, ValueError, r"eps must be > 0"),
    "teachers_none": (
        lambda a: {**a, "teachers": None},
        {},
        TypeError,
        r"teachers must be a Tensor or a list",
    ),
    "head_inputs_not_tensor": (
        lambda a: {**a, "head_inputs": 3.0},
        {},
        TypeError,
        r"head_inputs must be a Tensor or a list/tuple of Tensors, got float",
    ),
    "head_input_entry_not_tensor": (
        lambda a: replace(a, "head_inputs", 1, [[1.0]]),
        {},
        TypeError,
        r"head_inputs\[1\] must be a torch.Tensor, got list",
    ),
    "weight_entry_not_tensor": (
        lambda a: replace(a, "weights", 1, "w"),
        {},
        TypeError,
        r"weights\[1\] must be a torch.Tensor, got str",
    ),
    "teacher_integer_dtype": (
        lambda a: replace(a, "teachers", 1, a["teachers"][1].long()),
        {},
        TypeError,
        r"teachers\[1\] has dtype torch.int64; expected one of float32",
    ),
    "bias_integer_dtype": (
        lambda a: replace(a, "biases", 1, torch.zeros(3, dtype=torch.int32)),
        {},
        TypeError,
        r"biases\[1\] has dtype torch.int32",
    ),
    "beta_string": (lambda a: a, {"beta": "500"}, TypeError, r"beta must be a real number, got str"),
    "beta_bool": (lambda a: a, {"beta": True}, TypeError, r"beta must be a real number, got bool"),
    "slope_string": (
        lambda a: a,
        {"negative_slope": "0.1"},
        TypeError,
        r"negative_slope must be None or a real",
    ),
    "head_input_on_other_device": (
        lambda a: replace(a, "head_inputs", 1, a["head_inputs"][1].detach().to("meta")),
        {},
        ValueError,
        r"head_inputs\[1\] is on meta, expected cpu \(as teachers\[0\]\)",
    ),
    "teacher_on_other_device": (
        lambda a: replace(a, "teachers", 1, a["teachers"][1].to("meta")),
        {},
        ValueError,
        r"teachers\[1\] is on meta, expected cpu",
    ),
    "weight_on_other_device": (
        lambda a: replace(a, "weights", 1, a["weights"][1].detach().to("meta")),
        {},
        ValueError,
        r"weights\[1\] is on meta, expected cpu",
    ),
    "bias_on_other_device": (
        lambda a: replace(a, "biases", 0, a["biases"][0].detach().to("meta")),
        {},
        ValueError,
        r"biases\[0\] is on meta, expected cpu",
    ),
    "float64_head_input_on_triton": (
        lambda a: replace(a, "head_inputs", 1, a["head_inputs"][1].detach().double()),
        {"backend": "triton"},
        TypeError,
        r"head_inputs\[1\] is float64; backend='triton' takes float32",
    ),
    "float64_teacher_on_triton": (
        lambda a: replace(a, "teachers", 0, a["teachers"][0].double()),
        {"backend": "triton"},
        TypeError,
        r"teachers\[0\] is float64",
    ),
    "float64_weight_on_triton": (
        lambda a: replace(a, "weights", 1, a["weights"][1].detach().double()),
        {"backend": "triton"},
        TypeError,
        r"weights\[1\] is float64",
    ),
    "float64_bias_on_triton": (
        lambda a: replace(a, "biases", 1, a["biases"][1].detach().double()),
        {"backend": "triton"},
        TypeError,
        r"biases\[1\] is float64",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_raises_a_clear_error(case):
    mutate, kwargs, error, pattern = ERROR_CASES[case]
    args = mutate(valid_args())
    with pytest.raises(error, match=pattern):
        feed_loss(args["head_inputs"], args["teachers"], args["weights"], args["biases"], **kwargs)


def test_triton_backend_on_cpu_without_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = valid_args()
    with pytest.raises(ValueError, match=re.escape("backend='triton' needs CUDA tensors (got cpu)")):
        feed_loss(args["head_inputs"], args["teachers"], args["weights"], args["biases"], backend="triton")


def test_feed_loss_module_rejects_wrong_teacher_count():
    module = FEEDLoss(3, [2, 2], backend="torch")
    with pytest.raises(ValueError, match=r"teacher_features has 1 entries, expected 2"):
        module(torch.randn(2, 3, 3, 3), [torch.randn(2, 2, 3, 3)])
    with pytest.raises(ValueError, match=r"teacher_channels must name at least one teacher"):
        FEEDLoss(3, [])


def test_feed_loss_module_names_a_spatial_mismatch():
    module = FEEDLoss(3, [2, 4], backend="torch")
    with pytest.raises(ValueError, match=r"head_inputs\[1\] has spatial size \(3, 3\), expected \(2, 2\)"):
        module(torch.randn(2, 3, 3, 3), [torch.randn(2, 2, 3, 3), torch.randn(2, 4, 2, 2)])


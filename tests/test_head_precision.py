"""The head's precision policy (feed_fast/ops/head.py), the one rule every plan follows: the GEMM operand dtype
under autocast or not, and the TF32 flag as torch's old and new APIs spell it."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from feed_fast.ops.head import autocast_dtype, gemm_dtype, head_conv

bf16, fp16, fp32, fp64 = torch.bfloat16, torch.float16, torch.float32, torch.float64


@pytest.mark.parametrize(
    "head_input, weight, autocast, expected",
    [
        (bf16, bf16, None, bf16),  # shared dtype: tensor cores
        (fp16, fp16, None, fp16),
        (fp32, fp32, None, fp32),
        (bf16, fp32, None, fp32),  # mixed: exact products in float32
        (fp16, bf16, None, fp32),
        (fp32, fp32, bf16, bf16),  # autocast casts a conv's input and weight to its dtype
        (bf16, fp32, fp16, fp16),
        (fp64, fp32, bf16, fp64),  # ... but leaves float64 alone
        (fp64, fp64, None, fp64),
    ],
)
def test_gemm_dtype_rule(head_input, weight, autocast, expected):
    assert gemm_dtype(head_input, weight, autocast) == expected


def test_autocast_dtype_is_read_from_torch():
    assert autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype("cpu") == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.float16):
        assert autocast_dtype("cpu") == torch.float16


def test_head_conv_rounds_operands_and_ignores_an_outer_autocast():
    gen = torch.Generator().manual_seed(0)
    h, w = torch.randn(2, 3, 5, 4, generator=gen), torch.randn(6, 3, 3, 3, generator=gen)
    want = torch.nn.functional.conv2d(h.bfloat16().double(), w.bfloat16().double(), padding=1)
    with torch.autocast("cpu", dtype=torch.float16):  # must not turn the float64 conv into a float16 one
        got = head_conv(h, w, torch.bfloat16, torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_tf32_flag_in_the_legacy_spelling():
    assert run_python("""
        import torch
        from feed_fast.ops.head import matmul_allows_tf32
        print(matmul_allows_tf32())
        torch.backends.cuda.matmul.allow_tf32 = True
        print(matmul_allows_tf32())
    """) == ["False", "True"]


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_tf32_flag_in_the_new_spelling_after_the_legacy_one():
    """torch refuses the legacy read once both APIs were used; the flag is then read the new way."""
    assert run_python("""
        import torch
        from feed_fast.ops.head import matmul_allows_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        print(matmul_allows_tf32())
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        print(matmul_allows_tf32())
    """) == ["True", "False"]

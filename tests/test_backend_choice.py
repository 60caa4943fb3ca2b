"""`backend="auto"`: torch off CUDA, and on CUDA the plan `choose_fused_plan`'s cost model picks from the
shapes and dtypes. Its choices for the benchmark shapes are pinned here and tabulated in docs/ops.md; the
CUDA branch is exercised with meta tensors (shapes without memory), so it runs on any machine."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from feed_fast.backend_choice import HeadShape, choose_fused_plan, head_shapes, plan_seconds, resolve_backend
from feed_fast.validation import validate_inputs

OPS_DOC = Path(__file__).resolve().parents[1] / "docs" / "ops.md"

# The benchmark shapes (benchmarks/bench_feed_loss.py): (batch, NTL width, teacher maps).
BENCHMARK_SHAPES = {
    "cifar": (128, 64, [(64, 8, 8)] * 3),
    "imagenet": (256, 512, [(512, 7, 7)] * 3),
    "imagenet_r50_teacher": (256, 512, [(512, 7, 7), (512, 7, 7), (2048, 7, 7)]),
}
EXPECTED = {  # (shapes, head kernel) -> plan, under bf16 autocast
    ("cifar", 3): "triton",
    ("cifar", 1): "triton",
    ("imagenet", 3): "hybrid",
    ("imagenet", 1): "hybrid",
    ("imagenet_r50_teacher", 3): "hybrid",
    ("imagenet_r50_teacher", 1): "hybrid",
}


def heads(name: str, kernel: int, dtype=torch.bfloat16, weight_bytes=2):
    batch, width, teachers = BENCHMARK_SHAPES[name]
    return [HeadShape(batch, width, c, h, w, kernel, dtype, weight_bytes) for c, h, w in teachers]


@pytest.mark.parametrize("case", list(EXPECTED))
@pytest.mark.parametrize("weight_bytes", [2, 4])  # bf16 heads (the benchmark) or fp32 master weights (FEEDLoss)
def test_choices_for_the_benchmark_shapes(case, weight_bytes):
    assert choose_fused_plan(heads(*case, weight_bytes=weight_bytes)) == EXPECTED[case]


def test_identity_heads_always_take_the_fully_fused_plan():
    assert choose_fused_plan(heads("imagenet", 0)) == "triton"


def test_float32_cifar_goes_to_cudnn_which_uses_tf32_by_default():
    """IEEE fp32 GEMMs run on FMA units in the fused kernels; cuDNN's fp32 conv follows cudnn.allow_tf32."""
    assert choose_fused_plan(heads("cifar", 3, torch.float32, 4), matmul_tf32=False, cudnn_tf32=True) == "hybrid"
    assert choose_fused_plan(heads("cifar", 1, torch.float32, 4)) == "triton"


def test_more_conv_work_never_favours_the_fully_fused_plan():
    """The model's margin of hybrid over fused grows with the batch (conv FLOPs) at fixed launch counts."""
    margins = []
    for batch in (8, 32, 128, 512):
        shapes = [HeadShape(batch, 256, 256, 7, 7, 3, torch.bfloat16, 4)] * 3
        seconds = plan_seconds(shapes, False, True)
        margins.append(seconds["triton"] - seconds["hybrid"])
    assert margins == sorted(margins)
    assert margins[0] < 0 < margins[-1]  # small batches: fused; large: hybrid


def meta_inputs(name: str, kernel: int):
    batch, width, teachers = BENCHMARK_SHAPES[name]
    meta = {"device": "meta", "dtype": torch.bfloat16}
    return validate_inputs(
        [torch.empty(batch, width, h, w, **meta) for _, h, w in teachers],
        [torch.empty(batch, c, h, w, **meta) for c, h, w in teachers],
        [torch.empty(c, width, kernel, kernel, **meta) for c, _, _ in teachers],
        [torch.empty(c, **meta) for c, _, _ in teachers],
    )


@pytest.mark.parametrize("case", list(EXPECTED))
def test_head_shapes_read_the_inputs_as_the_model_expects(case):
    inputs = meta_inputs(*case)
    shapes = head_shapes(inputs, [torch.bfloat16] * inputs.num_teachers)
    assert shapes == heads(*case)
    assert choose_fused_plan(shapes) == EXPECTED[case]


def test_auto_off_cuda_is_torch():
    inputs = meta_inputs("cifar", 3)
    assert resolve_backend("auto", inputs, [torch.bfloat16] * 3, False, True) == "torch"


def test_the_docs_table_shows_what_the_model_picks():
    rows = re.findall(r"^\| (CIFAR|ImageNet, ResNet-50 teacher|ImageNet)[^|]*\| (\d) \| [\d /]+\| `(\w+)` \|",
                      OPS_DOC.read_text(), flags=re.MULTILINE)
    names = {"CIFAR": "cifar", "ImageNet": "imagenet", "ImageNet, ResNet-50 teacher": "imagenet_r50_teacher"}
    documented = {(names[shape], int(kernel)): plan for shape, kernel, plan in rows}
    assert documented == EXPECTED

"""`backend="auto"`: torch off CUDA, and on CUDA the plan `choose_fused_plan`'s cost model picks from the
shapes, dtypes and launch mode (eager, or replayed from a CUDA graph). Its choices for the benchmark shapes are
pinned here and tabulated in docs/ops.md; the model's rules (host time per launch only in eager mode, a GPU
floor per kernel in both, waves and occupancy) are checked one by one. The CUDA branch is exercised with meta
tensors (shapes without memory), so it runs on any machine."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from feed_fast.ops import backend_choice
from feed_fast.ops.backend_choice import (
    HeadShape,
    Kernel,
    choose_fused_plan,
    ctas_per_sm,
    current_launch_mode,
    head_shapes,
    kernel_seconds,
    launch_mode,
    plan_costs,
    plan_seconds,
    resolve_backend,
)
from feed_fast.ops.validation import validate_inputs

OPS_DOC = Path(__file__).resolve().parents[1] / "docs" / "ops.md"

# The benchmark shapes (benchmarks/bench_feed_loss.py): (batch, NTL width, teacher maps).
BENCHMARK_SHAPES = {
    "cifar": (128, 64, [(64, 8, 8)] * 3),
    "imagenet": (256, 512, [(512, 7, 7)] * 3),
    "imagenet_r50_teacher": (256, 512, [(512, 7, 7), (512, 7, 7), (2048, 7, 7)]),
}
EXPECTED = {  # (shapes, head kernel, launch mode) -> plan, under bf16 autocast
    ("cifar", 3, "eager"): "triton",
    ("cifar", 3, "graph"): "hybrid",  # a near tie in the model (about 50 / 48 us): see docs/ops.md
    ("cifar", 1, "eager"): "triton",
    ("cifar", 1, "graph"): "triton",
    ("imagenet", 3, "eager"): "hybrid",
    ("imagenet", 3, "graph"): "hybrid",
    ("imagenet", 1, "eager"): "hybrid",
    ("imagenet", 1, "graph"): "hybrid",
    ("imagenet_r50_teacher", 3, "eager"): "hybrid",
    ("imagenet_r50_teacher", 3, "graph"): "hybrid",
    ("imagenet_r50_teacher", 1, "eager"): "hybrid",
    ("imagenet_r50_teacher", 1, "graph"): "hybrid",
}


def heads(name: str, kernel: int, dtype=torch.bfloat16, weight_bytes=2):
    batch, width, teachers = BENCHMARK_SHAPES[name]
    return [HeadShape(batch, width, c, h, w, kernel, dtype, weight_bytes) for c, h, w in teachers]


@pytest.mark.parametrize("case", list(EXPECTED))
@pytest.mark.parametrize("weight_bytes", [2, 4])  # bf16 heads (the benchmark) or fp32 master weights (FEEDLoss)
def test_choices_for_the_benchmark_shapes(case, weight_bytes):
    name, kernel, mode = case
    assert choose_fused_plan(heads(name, kernel, weight_bytes=weight_bytes), mode=mode) == EXPECTED[case]


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_identity_heads_always_take_the_fully_fused_plan(mode):
    assert choose_fused_plan(heads("imagenet", 0), mode=mode) == "triton"


def test_float32_cifar_goes_to_cudnn_which_uses_tf32_by_default():
    """IEEE fp32 GEMMs run on FMA units in the fused kernels; cuDNN's fp32 conv follows cudnn.allow_tf32.
    The 1x1 head's GEMMs are small enough for the fused plan's fewer launches to win eagerly, not in a graph."""
    assert choose_fused_plan(heads("cifar", 3, torch.float32, 4), matmul_tf32=False, cudnn_tf32=True) == "hybrid"
    assert choose_fused_plan(heads("cifar", 1, torch.float32, 4), mode="eager") == "triton"
    assert choose_fused_plan(heads("cifar", 1, torch.float32, 4), mode="graph") == "hybrid"


def test_a_graph_replays_without_host_time_but_keeps_each_kernels_floor():
    for case in ("cifar", "imagenet"):
        for cost in plan_costs(heads(case, 3, weight_bytes=4), False, True).values():
            assert cost.host_seconds > 0
            assert cost.seconds("graph") == cost.gpu_seconds
            assert cost.seconds("eager") == max(cost.host_seconds, cost.gpu_seconds)
            assert cost.gpu_seconds >= len(cost.kernels) * backend_choice.GPU_SECONDS_PER_KERNEL
    with pytest.raises(ValueError, match="mode must be one of"):
        plan_costs(heads("cifar", 3), False, True)["triton"].seconds("replay")


def test_the_hybrid_plan_pays_a_floor_per_cudnn_kernel_and_cast():
    """Per head: cuDNN's forward and backward kernels, and with fp32 master weights a cast each way."""
    per_head = sum(backend_choice.CUDNN_KERNELS.values())
    for weight_bytes, casts in ((2, 0), (4, 2)):
        kernels = plan_costs(heads("cifar", 3, weight_bytes=weight_bytes), False, True)["hybrid"].kernels
        assert sum(not k.ctas for k in kernels) == 3 * (per_head + casts)


def test_the_fused_plan_launches_what_the_kernels_launch():
    """Five launches (forward, dz, input gradient, weight gradient, reduce), with the kernels' own grids: CIFAR's
    weight gradient is split over the batch to fill the GPU, ImageNet's already has enough tiles."""
    cifar = plan_costs(heads("cifar", 3), False, True)["triton"]
    assert [k.name for k in cifar.kernels] == ["forward", "grad_preact", "grad_input", "grad_weight", "grad_reduce"]
    assert cifar.host_seconds == 5 * backend_choice.HOST_SECONDS_PER_TRITON_LAUNCH
    assert {k.name: k.ctas for k in cifar.kernels} == {"forward": 384, "grad_preact": 384, "grad_input": 384,
                                                        "grad_weight": 270, "grad_reduce": 408}
    imagenet = plan_costs(heads("imagenet", 3), False, True)["triton"]
    assert {k.name: k.ctas for k in imagenet.kernels}["grad_weight"] == 1728


def test_occupancy_from_registers_and_shared_memory():
    """H100 rules: 64K registers in 256-register warp units, 228 KB shared memory less 1 KB per CTA, 64 warps."""
    assert ctas_per_sm(118, 28 * 1024, 8) == 2  # the forward before issue #18
    assert ctas_per_sm(77, 28 * 1024, 8) == 3
    assert ctas_per_sm(220, 28 * 1024, 8) == 1
    assert ctas_per_sm(48, 48 * 1024, 8) == 4  # shared memory bound
    assert ctas_per_sm(21, 0, 4) == 16  # warps bound
    assert ctas_per_sm(16, 0, 1) == 32  # the CTA limit


def test_waves_and_occupancy_set_a_kernels_time():
    """The same work in 27 CTAs (the weight gradient before the split) takes 132/27 times as long as in 132 (one
    per SM); an SM holding one 8-warp CTA runs at half the rate of one holding two (latency hiding), so 264 CTAs
    two per SM take half as long as 132, unless the SM holds only one at a time; one CTA too many for a wave of
    one per SM costs a second wave."""
    def seconds(ctas, per_sm=4):
        work = Kernel("k", ctas, per_sm, 8, 1e9, 1e15, 0.0, 1e12)
        return kernel_seconds(work) - backend_choice.GPU_SECONDS_PER_KERNEL

    assert seconds(27) == pytest.approx(seconds(132) * 132 / 27)
    assert seconds(264) == pytest.approx(seconds(132) / 2)
    assert seconds(264, per_sm=1) == pytest.approx(seconds(132))
    assert seconds(133, per_sm=1) == pytest.approx(2 * seconds(132, per_sm=1) * 132 / 133)


def test_launch_mode_is_explicit_or_read_from_a_capture(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert current_launch_mode(cuda) == "eager"
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert current_launch_mode(cuda) == "graph"
    assert current_launch_mode(torch.device("meta")) == "eager"
    with launch_mode("eager"):
        assert current_launch_mode(cuda) == "eager"
        with launch_mode("graph"):
            assert current_launch_mode(torch.device("meta")) == "graph"
        assert current_launch_mode(cuda) == "eager"
    with pytest.raises(ValueError, match="mode must be one of"), launch_mode("compiled"):
        pass


def test_launch_mode_traces_without_a_graph_break(monkeypatch):
    """Under torch.compile(fullgraph=True) `auto` reads the mode without the capture query (a C call)."""
    def capture_query():
        raise AssertionError("queried the capture state while tracing")

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", capture_query)

    def step(x):
        return x + (1.0 if current_launch_mode(torch.device("cuda")) == "eager" else 2.0)

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    assert compiled(torch.zeros(2)).tolist() == [1.0, 1.0]
    with launch_mode("graph"):
        torch._dynamo.reset()
        assert torch.compile(step, fullgraph=True, backend="eager")(torch.zeros(2)).tolist() == [2.0, 2.0]
    torch._dynamo.reset()


def test_the_model_traces_without_a_graph_break():
    """`auto` runs inside compiled steps: the whole model is plain Python that Dynamo follows."""
    def step(x):
        choice = choose_fused_plan(heads("cifar", 1, weight_bytes=4), mode=current_launch_mode(torch.device("meta")))
        return x + (1.0 if choice == "triton" else 2.0)

    assert torch.compile(step, fullgraph=True, backend="eager")(torch.zeros(2)).tolist() == [1.0, 1.0]
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("channels", [64, 256])
def test_more_conv_work_never_favours_the_fully_fused_plan(mode, channels):
    """The model's margin of hybrid over fused grows with the batch (conv FLOPs) at fixed launch counts. CIFAR's
    64-channel heads: fused for small batches, hybrid for large ones; 256-channel heads: hybrid throughout, since
    the fused forward gives each sample one CTA, too few to fill the GPU at small batches and too much GEMM
    at large ones."""
    margins = []
    for batch in (8, 128, 512, 2048):
        shapes = [HeadShape(batch, channels, channels, 8, 8, 3, torch.bfloat16, 4)] * 3
        seconds = plan_seconds(shapes, False, True, mode)
        margins.append(seconds["triton"] - seconds["hybrid"])
    assert margins == sorted(margins)
    if channels == 64:
        assert margins[0] < 0 < margins[-1]
    else:
        assert margins[0] > 0


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
    name, kernel, mode = case
    inputs = meta_inputs(name, kernel)
    shapes = head_shapes(inputs, [torch.bfloat16] * inputs.num_teachers)
    assert shapes == heads(name, kernel)
    assert choose_fused_plan(shapes, mode=mode) == EXPECTED[case]


def test_auto_off_cuda_is_torch():
    inputs = meta_inputs("cifar", 3)
    assert resolve_backend("auto", inputs, [torch.bfloat16] * 3, False, True) == "torch"


def test_the_docs_table_shows_what_the_model_picks():
    rows = re.findall(r"^\| (CIFAR|ImageNet, ResNet-50 teacher|ImageNet)[^|]*\| (\d) \| [\d /]+\| `(\w+)` "
                      r"\| [\d /]+\| `(\w+)` \|", OPS_DOC.read_text(), flags=re.MULTILINE)
    names = {"CIFAR": "cifar", "ImageNet": "imagenet", "ImageNet, ResNet-50 teacher": "imagenet_r50_teacher"}
    documented = {}
    for shape, kernel, eager, graph in rows:
        documented[names[shape], int(kernel), "eager"] = eager
        documented[names[shape], int(kernel), "graph"] = graph
    assert documented == EXPECTED

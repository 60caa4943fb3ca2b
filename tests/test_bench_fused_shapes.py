"""The fused FEED op at the benchmarks' real shapes (benchmarks/feed_loss_shapes.py: CIFAR, B=128 and 64x8x8 maps;
ImageNet, B=256 and 512x7x7 maps; K=3 teachers, 3x3 heads), in bf16 and channels-last as the trainer and the
benchmarks run it: the triton and hybrid plans against the float64 reference (loss and every gradient), the
gradients in their inputs' layout, and no host sync in a warm call. `benchmarks/gpu_check.sh quick` runs these
(part b) before it times anything. The CPU twin runs the same checks at the smoke shapes, the kernels in
Triton's interpreter."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import feed_loss_impls as impls
import feed_loss_shapes as grid

from feed_fast import feed_loss

# Relative to the largest magnitude of each compared tensor. bf16 inputs are exact in float64, so what differs
# is the plans' bf16 GEMMs (fp32 accumulation) and bf16 gradients: a few 2^-8 roundings. tests/test_fused_kernels
# uses the same bound for bf16 on CUDA; the interpreter's GEMMs are more exact.
TOLERANCE = {"cuda": 3e-2, "cpu": 2e-2}
REAL = {s.name: s for s in grid.FULL_SHAPES}
CASES = [pytest.param(REAL[name], impl, "cuda", marks=pytest.mark.gpu, id=f"{name}-{impl}-cuda")
         for name in ("cifar", "imagenet") for impl in impls.KERNEL_IMPLS]
CPU_TWINS = [pytest.param(grid.SMOKE_SHAPES[0], impl, "cpu", id=f"{grid.SMOKE_SHAPES[0].name}-{impl}-cpu")
             for impl in impls.KERNEL_IMPLS]


def reference(inputs: grid.StepInputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The torch reference in float64 on the same (bf16) values: the loss and the gradients of every leaf."""
    leaves = [x.detach().double().requires_grad_() for x in inputs.leaves()]
    k = len(inputs.teachers)
    head_inputs, weights, biases = leaves[:k], leaves[k:2 * k], leaves[2 * k:]
    loss = feed_loss(head_inputs, [t.double() for t in inputs.teachers], weights, biases, beta=grid.BETA,
                     negative_slope=grid.NEGATIVE_SLOPE, backend="torch")
    return loss, list(torch.autograd.grad(loss, leaves))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str) -> None:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    error = ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
    assert error <= tolerance, f"{what}: max error {error:.3g} of the largest magnitude, tolerance {tolerance}"


@pytest.mark.parametrize(("shape", "impl", "device"), CASES + CPU_TWINS)
def test_fused_plans_match_the_float64_reference_at_the_benchmark_shapes(shape, impl, device):
    inputs = grid.make_inputs(shape, 3, torch.device(device), "channels_last")
    loss_fn = impls.make_loss_fn(impl)  # under bf16 autocast, as the benchmarks time it
    loss = loss_fn(*inputs)
    grads = torch.autograd.grad(loss, inputs.leaves())
    want_loss, want_grads = reference(inputs)
    tolerance = TOLERANCE[device]
    assert loss.dtype == torch.float32
    assert_close(loss, want_loss, tolerance, f"{shape.name} {impl} loss")
    names = [f"head_input_{i}" for i in range(3)] + [f"weight_{i}" for i in range(3)] + [f"bias_{i}" for i in range(3)]
    for name, got, want, leaf in zip(names, grads, want_grads, inputs.leaves()):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype, name
        assert_close(got, want, tolerance, f"{shape.name} {impl} {name}")
    for got in grads[:3]:  # the trainer's layout comes back as it went in
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", impls.KERNEL_IMPLS)
@pytest.mark.parametrize("name", ["cifar", "imagenet"])
def test_a_warm_call_at_the_benchmark_shapes_never_syncs(name, impl):
    inputs = grid.make_inputs(REAL[name], 3, torch.device("cuda"), "channels_last")
    loss_fn = impls.make_loss_fn(impl)
    impls.training_step(loss_fn, inputs)  # compiles and autotunes outside the checked call
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        impls.training_step(loss_fn, inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()

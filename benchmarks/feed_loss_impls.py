"""The implementations of one FEED loss step that the benchmarks compare, all under bf16 autocast:

    triton    feed_loss(backend="triton"): the fully fused kernels
    hybrid    feed_loss(backend="hybrid"): cuDNN head conv, fused bias/activation/normalisation/L1
    auto      feed_loss(backend="auto"): whatever the op picks for these shapes
    torch     feed_loss(backend="torch"): our readable reference (float32 math)
    eager     what a user writes without feed-fast: bf16 conv + bias + LeakyReLU + F.normalize + L1, autograd
    compile   torch.compile of `eager` (default mode)
    compile_reduce_overhead   torch.compile(mode="reduce-overhead") of `eager` (CUDA graphs on a GPU)
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from feed_loss_shapes import AUTOCAST_DTYPE, BETA, NEGATIVE_SLOPE, StepInputs

from feed_fast import feed_loss

IMPLS = ("triton", "hybrid", "auto", "torch", "eager", "compile", "compile_reduce_overhead")
KERNEL_IMPLS = ("triton", "hybrid")  # need Triton: a GPU, or the interpreter
COMPILED_IMPLS = ("compile", "compile_reduce_overhead")
BASELINE = "eager"  # speedups are against what a user would write


def eager_feed_loss(head_inputs, teachers, weights, biases) -> torch.Tensor:
    """The baseline, as a user would write FEED in PyTorch (FT's official code does the same per teacher)."""
    loss = 0.0
    for h, t, w, b in zip(head_inputs, teachers, weights, biases):
        y = F.leaky_relu(F.conv2d(h, w, b, padding=w.shape[-1] // 2), NEGATIVE_SLOPE)
        loss = loss + F.l1_loss(F.normalize(y.flatten(1), dim=1), F.normalize(t.flatten(1), dim=1))
    return BETA * loss


def _autocast(fn: Callable) -> Callable:
    def under_autocast(head_inputs, teachers, weights, biases):
        with torch.autocast(teachers[0].device.type, dtype=AUTOCAST_DTYPE):
            return fn(head_inputs, teachers, weights, biases)

    return under_autocast


def _feed_fast(backend: str) -> Callable:
    def op(head_inputs, teachers, weights, biases):
        # Positional first argument: it is being renamed (students -> head_inputs).
        return feed_loss(
            head_inputs, teachers, weights, biases, beta=BETA, negative_slope=NEGATIVE_SLOPE, backend=backend
        )

    return op


def default_compile_backend(device: torch.device) -> str:
    """Inductor on a GPU; aot_eager on the CPU, where Inductor's C++ build costs ~15-30 s per shape."""
    return "inductor" if device.type == "cuda" else "aot_eager"


def make_loss_fn(impl: str, compile_backend: str = "inductor") -> Callable:
    """fn(head_inputs, teachers, weights, biases) -> scalar loss, for one implementation."""
    if impl in ("triton", "hybrid", "auto", "torch"):
        return _autocast(_feed_fast(impl))
    if impl == "eager":
        return _autocast(eager_feed_loss)
    if impl not in COMPILED_IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    torch._dynamo.reset()  # each case compiles afresh instead of filling one recompile cache
    if impl == "compile":
        return torch.compile(_autocast(eager_feed_loss), backend=compile_backend, dynamic=False)
    # mode= only means something to Inductor; another backend (aot_eager on the CPU) compiles as `compile`.
    mode = {"mode": "reduce-overhead"} if compile_backend == "inductor" else {}
    compiled = torch.compile(_autocast(eager_feed_loss), backend=compile_backend, dynamic=False, **mode)

    def step_of_graphs(*inputs):
        # Each call is a new training step: lets CUDA-graph trees reuse their memory pool safely.
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*inputs)

    return step_of_graphs


def kernel_skip_reason(device: torch.device) -> str | None:
    """Why the Triton implementations cannot run on `device`, or None when they can."""
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    try:
        import feed_fast.ops.fused  # noqa: F401
    except ImportError as error:
        return f"fused kernels not available (feed_fast.ops.fused: {error}); only the torch paths ran"
    if device.type == "cuda" and interpreted:
        return "TRITON_INTERPRET=1 on a GPU would time the interpreter, not the kernels: unset it"
    if device.type != "cuda" and not interpreted:
        return "no GPU and TRITON_INTERPRET is not 1: the Triton cases need one or the other"
    return None


def training_step(loss_fn: Callable, inputs: StepInputs) -> torch.Tensor:
    """One forward+backward of the loss alone; gradients to the heads' inputs, weights and biases."""
    for x in inputs.leaves():
        x.grad = None
    loss = loss_fn(*inputs)
    loss.backward()
    return loss

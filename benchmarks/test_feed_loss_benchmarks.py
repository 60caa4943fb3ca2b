"""pytest-benchmark suite of the FEED loss op: one forward+backward step per implementation, shape, head
kernel and layout, grouped per shape (the grid of benchmarks/feed_loss_shapes.py, as bench_feed_loss.py).

    pytest benchmarks --benchmark-only                            # time them (full grid on a GPU, tiny on CPU)
    pytest benchmarks --benchmark-only --benchmark-autosave       # ... and save the run under .benchmarks/
    pytest benchmarks --benchmark-only --benchmark-compare        # against the last saved run
    pytest benchmarks --benchmark-only -k "cifar and k3"          # a part of the grid
    pytest benchmarks                                             # each case once, as a check (no timing)

Each case first checks that its loss matches the eager baseline's, so nothing wrong is ever timed. On a GPU
every step ends with a synchronize (pytest-benchmark's clock is the host's) and steps rotate among input sets
spanning twice the H100's L2; on the CPU the Triton cases run in the interpreter: figures prove the suite,
not the op's speed, and those cases say so in their name (`...-triton-triton-interpreter`, which is what
pytest-benchmark's table shows) and in `extra_info["triton_interpreter"]`. The JSON script (bench_feed_loss.py) adds what a timer cannot give: memory, saved bytes,
launches and the device profile.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from feed_loss_impls import (
    IMPLS,
    KERNEL_IMPLS,
    default_compile_backend,
    kernel_skip_reason,
    make_loss_fn,
    training_step,
)
from feed_loss_shapes import (
    FEATURE_DTYPE,
    FULL_SHAPES,
    HEAD_DTYPE,
    KERNEL_SIZES,
    LAYOUTS,
    SMOKE_SHAPES,
    make_inputs,
    minimum_bytes,
    rotation_sets,
    useful_flops,
)
from gpu_check_report import INTERPRETER_LABEL, kernels_interpreted

from feed_fast.runtime import resolve_device

DEVICE = resolve_device()
INTERPRETED = kernels_interpreted()  # benchmarks/conftest.py chose the interpreter where no GPU is


def case_id(shape, kernel_size: int, layout: str, impl: str) -> str:
    """The case's name; a case run in Triton's interpreter carries the label, so every table shows it."""
    label = f"-{INTERPRETER_LABEL}" if INTERPRETED and impl in KERNEL_IMPLS else ""
    return f"{shape.name}-k{kernel_size}-{layout}-{impl}{label}"


def grid(config) -> list:
    choice = config.getoption("--feed-grid", default="auto")
    full = DEVICE.type == "cuda" if choice == "auto" else choice == "full"
    # On the CPU one tiny shape and the trainer's layout keep the interpreter's share near half a minute.
    shapes, layouts = (FULL_SHAPES, LAYOUTS) if full else (SMOKE_SHAPES[:1], LAYOUTS[:1])
    return [
        pytest.param(
            shape, kernel_size, layout, impl,
            marks=pytest.mark.benchmark(group=f"{shape.name} k{kernel_size} {layout}"),
            id=case_id(shape, kernel_size, layout, impl),
        )
        for shape in shapes
        for kernel_size in KERNEL_SIZES
        for layout in layouts
        for impl in IMPLS
    ]


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize(("shape", "kernel_size", "layout", "impl"), grid(metafunc.config))


@pytest.fixture(autouse=True)
def free_device_memory():
    yield
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def test_feed_loss_step(benchmark, shape, kernel_size, layout, impl):
    if impl in KERNEL_IMPLS and (reason := kernel_skip_reason(DEVICE)):
        pytest.skip(reason)
    n_sets = rotation_sets(shape, kernel_size) if DEVICE.type == "cuda" else 2
    sets = [make_inputs(shape, kernel_size, DEVICE, layout, seed=i) for i in range(n_sets)]
    loss_fn = make_loss_fn(impl, default_compile_backend(DEVICE))
    loss = training_step(loss_fn, sets[0]).item()  # compiles / autotunes before the clock starts
    baseline = training_step(make_loss_fn("eager"), sets[0]).item()
    assert abs(loss - baseline) <= 2e-2 * abs(baseline), (impl, loss, baseline)

    rotation = itertools.cycle(sets)

    def step():
        training_step(loss_fn, next(rotation))
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    benchmark.extra_info.update(
        shape=shape.name, batch=shape.batch, head_input_width=shape.width, teachers=[list(t) for t in shape.teachers],
        kernel_size=kernel_size, layout=layout, impl=impl, input_sets=n_sets,
        triton_interpreter=INTERPRETED and impl in KERNEL_IMPLS,
        dtypes={"features": str(FEATURE_DTYPE), "heads": str(HEAD_DTYPE), "autocast": "bfloat16"},
        useful_flops=useful_flops(shape, kernel_size), minimum_bytes=minimum_bytes(shape, kernel_size),
    )
    benchmark(step)

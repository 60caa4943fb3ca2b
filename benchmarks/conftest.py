"""pytest-benchmark setup for the microbenchmarks in benchmarks/ (`pytest benchmarks --benchmark-only`).

Triton's mode is fixed when @triton.jit decorates a kernel, so without a GPU the interpreter is chosen here,
before anything imports triton (as tests/conftest.py does for the test suite).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)  # steady figures on a small shared CPU, as bench_feed_loss.py does there

from feed_fast.environment import environment  # after the interpreter choice above
from feed_fast.runtime import resolve_device


def pytest_addoption(parser):
    parser.addoption(
        "--feed-grid",
        choices=("auto", "full", "smoke"),
        default="auto",
        help="FEED loss benchmark grid: full shapes (default on a GPU) or tiny ones (default on the CPU)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pyproject's addopts disables benchmarks so that `make test` runs each benchmark test once; asking for
    # --benchmark-only means timing them, so that wins (pytest-benchmark would refuse the pair otherwise).
    if config.getoption("benchmark_only", default=False):
        config.option.benchmark_enable = True


def pytest_benchmark_update_machine_info(config, machine_info):
    """Saved runs name the device and versions the figures come from (GPU name, torch, triton, CUDA)."""
    machine_info["feed_fast"] = environment(resolve_device())
    machine_info["feed_fast"]["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0") == "1"

"""Test-wide setup. Triton's interpreter must be chosen before triton is imported (the mode is fixed when
@triton.jit decorates a kernel), so it is set here, before anything imports feed_fast. On a GPU machine run
`TRITON_INTERPRET=0 pytest -m gpu` to test the compiled kernels."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

try:  # Decorate the kernels now, in the mode chosen above, whatever a test later does to the environment.
    import feed_fast.ops.fused  # noqa: F401
except ImportError:  # no triton on this platform: the torch backend still runs
    pass

# `make test` runs the suite in pytest-xdist workers (one file at a time each, so module fixtures run once):
# each worker takes its share of the cores, not all of them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))
# The processes tests start (a benchmark suite under pytest, gpu_check.sh) are sessions of their own, as a user
# starts them: with these inherited, pytest-benchmark would take such a session for an xdist worker and refuse
# to time anything. xdist itself reads its worker state from the config, not from here.
for _name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
    os.environ.pop(_name, None)


def pytest_collection_modifyitems(config, items):
    # Files holding slow tests first (a stable sort: files stay whole and in order): xdist deals files out in
    # this order, so the long ones start early instead of leaving one worker busy alone at the end.
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; its CPU twin runs everywhere")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """Training tests run single-threaded: two threads on a shared 2-core machine oversubscribe and run ~10x
    slower, and results differ by thread count. Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def aot_eager_compiles():
    """The engine's compiled units are traced as under Inductor (Dynamo fullgraph, AOTAutograd: the graph breaks,
    recompiles, graph inputs and numerics of the traced step) but run without generated code. For tests of what
    the step does around the compiler: Inductor's C++ build of a model costs a cold run minutes per graph. The
    Inductor step itself is tested in test_step_modes.py."""
    from feed_fast.runtime.device import compile_backend

    with compile_backend("aot_eager"):
        yield

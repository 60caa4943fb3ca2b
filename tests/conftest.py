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

# `make test` runs the suite in pytest-xdist workers: each takes its share of the cores, not all of them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config, items):
    # One worker runs a whole file (its module fixtures build their runs and data once) unless the file names
    # a group to share with other files (the compile probes share one per-process cache).
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.name))
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

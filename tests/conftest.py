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

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
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

"""The kernels compile for sm_90 without spilling under both Triton versions that matter: the one installed
here (the newest) and 3.6.0, the version on the lent H100 machines (torch 2.11) and the floor in pyproject.toml.

Compiled: the probe's mixed-teacher variants (B=2, every kernel and autotuning config), and the shapes users run
(B=128 CIFAR and B=256 ImageNet, K=3, channels-last; `USER_SHAPES` in tests/_compile_probe.py), where Triton's
specialisation of integers divisible by 16 gives other code than at B=2. Of those the suite compiles a
representative set (`REPRESENTATIVE`: both batch sizes, both plans, bf16, fp32 and TF32, 1x1 and 3x3): each user
shape costs about 15 s of cold compiling per Triton version, the whole matrix (18) some 9 minutes of a 2-core
CI run. The bf16 plans at both shapes, under both versions, are also in the committed figures
(benchmarks/results/kernel_figures_sm90.json, checked spill-free by tests/test_kernel_figures.py). The whole
matrix, when a change to the kernels calls for it: `python tests/gpu_compile_probe.py 90 users` (with
PYTHONPATH=~/.cache/feed-fast/triton-3.6.0 for the floor; every row must show 0 stack bytes and spills).
No local memory anywhere: no stack, no local loads or stores in the SASS.

3.6.0 is installed once with `pip install --target` into ~/.cache/feed-fast (or $FEED_FAST_CACHE) and put
first on PYTHONPATH for the compile probe's subprocess; later runs reuse it. Registers per thread are
reported for every kernel and config (`pytest -rP` shows them; JUnit XML records them).
"""
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
from _compile_probe import TRITON_FLOOR, USER_SHAPES, installed_triton, no_local_memory, probe_rows

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def floor_is_declared_in_pyproject() -> bool:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    major_minor = ".".join(TRITON_FLOOR.split(".")[:2])
    return f'"triton>={major_minor}' in text


def test_pyproject_states_the_tested_triton_floor():
    assert floor_is_declared_in_pyproject(), f"pyproject.toml must require triton>={TRITON_FLOOR[:3]}"


# Every value of each axis of the matrix at least once: B=128 and 256, fused and hybrid, bf16, fp32 and
# TF32, 3x3 and 1x1 (bf16 hybrid at both shapes: the committed figures).
REPRESENTATIVE = ("cifar_bf16_fused_3x3", "cifar_fp32_tf32_hybrid", "imagenet_fp32_fused_3x3", "imagenet_bf16_fused_1x1")
needs_ptxas = pytest.mark.skipif(not PTXAS.exists(), reason="this triton build ships no ptxas")
pytestmark = pytest.mark.slow  # Triton's compiler and ptxas, minutes on a cold cache


def triton_path(version: str) -> str | None:
    if version == "installed":
        return None
    target, why = installed_triton(version)
    if target is None:
        pytest.skip(why)
    return str(target)


def assert_no_local_memory(rows, version: str) -> str:
    assert {r["triton"] for r in rows} == {triton.__version__ if version == "installed" else version}
    return no_local_memory(rows)


# The installed Triton's compile of the same kernels and configs is checked for local memory where it is made,
# in test_kernels_compile_for_gpu.py (the probe caches per process; the two files may run in different workers).
@needs_ptxas
@pytest.mark.parametrize("version", [TRITON_FLOOR])
def test_every_kernel_and_config_compiles_for_sm90_without_spills(version, record_property):
    rows = probe_rows(90, triton_path(version))
    table = assert_no_local_memory(rows, version)
    print(table)
    record_property("registers", table)


@needs_ptxas
@pytest.mark.parametrize("version", [TRITON_FLOOR, "installed"])
def test_the_shapes_users_run_compile_without_local_memory(version, record_property):
    assert set(REPRESENTATIVE) <= set(USER_SHAPES)
    rows = probe_rows(90, triton_path(version), REPRESENTATIVE)
    assert {r["variant"] for r in rows} == set(REPRESENTATIVE)
    record_property("registers", assert_no_local_memory(rows, version))

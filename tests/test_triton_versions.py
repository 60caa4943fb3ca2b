"""The kernels compile for sm_90 without spilling under both Triton versions that matter: the one installed
here (the newest) and 3.6.0, the version on the lent H100 machines (torch 2.11) and the floor in pyproject.toml.

3.6.0 is installed once with `pip install --target` into ~/.cache/feed-fast (or $FEED_FAST_CACHE) and put
first on PYTHONPATH for the compile probe's subprocess; later runs reuse it. Registers per thread are
reported for every kernel and config (`pytest -rP` shows them; JUnit XML records them).
"""
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
from _compile_probe import TRITON_FLOOR, installed_triton, probe_rows, register_table

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def floor_is_declared_in_pyproject() -> bool:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    major_minor = ".".join(TRITON_FLOOR.split(".")[:2])
    return f'"triton>={major_minor}' in text


def test_pyproject_states_the_tested_triton_floor():
    assert floor_is_declared_in_pyproject(), f"pyproject.toml must require triton>={TRITON_FLOOR[:3]}"


@pytest.mark.skipif(not PTXAS.exists(), reason="this triton build ships no ptxas")
@pytest.mark.parametrize("version", [TRITON_FLOOR, "installed"])
def test_every_kernel_and_config_compiles_for_sm90_without_spills(version, record_property):
    path = None
    if version != "installed":
        target, why = installed_triton(version)
        if target is None:
            pytest.skip(why)
        path = str(target)
    rows = probe_rows(90, path)
    table = register_table(rows)
    print(table)
    record_property("registers", table)
    assert rows, "the probe compiled nothing"
    assert {r["triton"] for r in rows} == {triton.__version__ if version == "installed" else version}
    assert all(r["spill_stores"] == r["spill_loads"] == 0 for r in rows), table
    assert all(r["registers"] is not None and r["registers"] <= 255 for r in rows), table

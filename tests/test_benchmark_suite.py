"""The pytest-benchmark suite under benchmarks/ works as its docstring says: `pytest benchmarks --benchmark-only`
times it despite pyproject's --benchmark-disable, --benchmark-autosave saves a run that names the device and
versions, --benchmark-compare compares against it, the grid is the shared one (tiny on the CPU), and a case run in
Triton's interpreter says so in its name and extra_info."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import feed_loss_impls
import feed_loss_shapes

QUICK = ["-k", "k1 and (eager or torch)"]  # two cheap cases: the plumbing, not the interpreter's speed


def pytest_benchmarks(*args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("TRITON_INTERPRET", None)  # benchmarks/conftest.py chooses it
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "benchmarks", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def collected_ids(*args) -> list[str]:
    result = pytest_benchmarks("--collect-only", "-q", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::test_feed_loss_step[" in line]


def test_the_grid_is_the_shared_one():
    impls = len(feed_loss_impls.IMPLS)
    smoke = collected_ids()  # this machine has no GPU: the tiny grid
    assert len(smoke) == len(feed_loss_shapes.KERNEL_SIZES) * impls
    assert all(f"[{feed_loss_shapes.SMOKE_SHAPES[0].name}-k" in test_id for test_id in smoke)
    full = collected_ids("--feed-grid", "full")
    assert len(full) == len(feed_loss_shapes.FULL_SHAPES) * 2 * 2 * impls  # shapes x kernels x layouts x impls
    assert any("imagenet_r50_teacher-k3-nchw-triton" in test_id for test_id in full)
    # no GPU here: the kernel cases run in Triton's interpreter, and their names (what every table shows) say so
    for test_id in smoke:
        kernel_case = any(f"-{impl}" in test_id.split("[")[1] for impl in feed_loss_impls.KERNEL_IMPLS)
        assert test_id.endswith("-triton-interpreter]") == kernel_case, test_id


def test_an_interpreted_case_is_labelled_in_the_saved_run(tmp_path):
    out = tmp_path / "run.json"
    result = pytest_benchmarks("--benchmark-only", f"--benchmark-json={out}", "-k", "k1 and hybrid")
    assert result.returncode == 0, result.stdout + result.stderr
    (bench,) = json.loads(out.read_text())["benchmarks"]
    assert bench["name"].endswith("-hybrid-triton-interpreter]") and bench["extra_info"]["triton_interpreter"] is True
    assert "triton-interpreter" in result.stdout  # pytest-benchmark's table


def test_autosave_then_compare(tmp_path):
    storage = f"file://{tmp_path / 'runs'}"
    first = pytest_benchmarks("--benchmark-only", "--benchmark-autosave", f"--benchmark-storage={storage}", *QUICK)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 passed" in first.stdout and "Saved benchmark data in" in first.stdout + first.stderr
    (saved,) = (tmp_path / "runs").rglob("0001_*.json")
    run = json.loads(saved.read_text())
    assert run["machine_info"]["feed_fast"]["device"]["type"] == "cpu"
    assert run["machine_info"]["feed_fast"]["versions"]["torch"]
    assert {b["group"] for b in run["benchmarks"]} == {f"{feed_loss_shapes.SMOKE_SHAPES[0].name} k1 channels_last"}
    for bench in run["benchmarks"]:
        assert bench["stats"]["rounds"] >= 1 and bench["stats"]["median"] > 0
        assert bench["extra_info"]["kernel_size"] == 1 and bench["extra_info"]["useful_flops"] > 0
        assert bench["extra_info"]["triton_interpreter"] is False  # eager and torch run no Triton kernel

    second = pytest_benchmarks("--benchmark-only", "--benchmark-compare", f"--benchmark-storage={storage}", *QUICK)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Comparing against benchmarks from" in second.stdout + second.stderr  # pytest-benchmark logs to stderr
    assert "(0001_" in second.stdout and "(NOW)" in second.stdout  # the saved and the new rows, side by side


def test_without_benchmark_only_each_case_runs_once_as_a_check():
    result = pytest_benchmarks(*QUICK)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout and "Name (time in" not in result.stdout  # no timing table

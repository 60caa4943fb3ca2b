"""benchmarks/gpu_check.sh, the one command for a GPU machine, run here in its smoke mode: the same parts,
files and records as on an H100, with tiny shapes on the CPU (the Triton kernels in the interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import feed_fast

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check_report


def run_check(*args, out: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    environ.pop("TRITON_INTERPRET", None)  # the script decides it: 1 in smoke mode, 0 on a GPU
    return subprocess.run(["bash", str(SCRIPT), *args], env=environ, capture_output=True, text=True,
                          timeout=timeout, check=False)


def only(folder: Path, pattern: str) -> Path:
    (path,) = folder.glob(pattern)
    return path


def test_smoke_run_of_every_part_writes_every_record(tmp_path):
    result = run_check("all", out=tmp_path, GPU_CHECK_SMOKE="1")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "no install" in result.stdout  # feed_fast is importable here: the smoke run leaves the venv alone

    env = json.loads(only(tmp_path, "smoke_gpu_check_env_cpu_*.json").read_text())
    assert env["device"]["type"] == "cpu" and env["versions"]["torch"] and env["versions"]["triton"]
    assert env["settings"]["TRITON_INTERPRET"] == "1" and env["nvidia_smi"]["available"] is False
    assert env["settings"]["TRITON_CACHE_DIR"] and env["settings"]["TORCHINDUCTOR_CACHE_DIR"]
    assert only(tmp_path, "smoke_nvidia_smi_cpu_*.txt").read_text().strip()

    for part in ("tests", "cifar", "imagenet", "step"):
        status = json.loads(only(tmp_path, f"smoke_gpu_check_{part}_cpu_*.json").read_text())
        assert status["ok"] and status["smoke"] and not status["timed_out"], status
        assert status["limit_s"] == 510 and 0 <= status["seconds"] < 510
        assert status["outputs"] and all(status["outputs"].values()), status  # every promised file exists
        assert only(tmp_path, f"smoke_gpu_check_{part}_cpu_*.log").read_text()

    tests = json.loads(only(tmp_path, "smoke_gpu_tests_cpu_*.json").read_text())
    assert tests["ok"] and tests["tests"] > 0 and tests["skipped"] == tests["tests"]  # GPU tests skip on a CPU
    for name in ("cifar", "imagenet"):
        report = json.loads(only(tmp_path, f"smoke_feed_loss_{name}_cpu_*.json").read_text())
        assert report["mode"] == "smoke" and report["device"]["type"] == "cpu"
        assert report["settings"]["triton_interpret"] is True
        assert report["results"] and all(r["status"] == "ok" for r in report["results"])
    for preset in ("cifar", "imagenet"):
        step = json.loads(only(tmp_path, f"smoke_step_{preset}_cpu_*.json").read_text())
        assert step["device"]["type"] == "cpu" and step["results"]


def test_a_part_that_reaches_its_limit_is_stopped_and_recorded(tmp_path):
    result = run_check("--smoke", "cifar", out=tmp_path, GPU_CHECK_PART_LIMIT_S="1", timeout=120)
    assert result.returncode in (124, 137), result.stdout + result.stderr
    status = json.loads(only(tmp_path, "smoke_gpu_check_cifar_cpu_*.json").read_text())
    assert status["timed_out"] and not status["ok"] and status["limit_s"] == 1
    assert "reached its limit" in result.stdout


def test_bad_usage_is_refused(tmp_path):
    result = run_check("--smoke", "speed", out=tmp_path, timeout=60)
    assert result.returncode == 2 and "unknown PART 'speed'" in result.stderr
    result = run_check(out=tmp_path, timeout=60)
    assert result.returncode == 2 and "PART: tests | cifar | imagenet | step | all" in result.stderr


@pytest.mark.skipif(not str(Path(feed_fast.__file__).resolve()).startswith(str(REPO)),
                    reason="feed_fast is installed from elsewhere: the GPU mode would pip-install this checkout")
def test_gpu_mode_without_a_gpu_says_what_to_do(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_check("cifar", out=tmp_path, timeout=120)
    assert result.returncode == 2 and "no CUDA device here; use --smoke" in result.stderr


def test_junit_summary_counts_and_names_failures(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4" failures="1" errors="1" '
        'skipped="1" time="2.5">'
        '<testcase classname="tests.test_a" name="test_ok" time="0.1"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2">tb</failure></testcase>'
        '<testcase classname="tests.test_b" name="test_err"><error message="fixture broke"/></testcase>'
        '<testcase classname="tests.test_b" name="test_gpu"><skipped message="needs CUDA"/></testcase>'
        "</testsuite></testsuites>"
    )
    summary = gpu_check_report.junit_summary(xml)
    assert (summary["tests"], summary["passed"], summary["failures"], summary["errors"], summary["skipped"]) == (
        4, 1, 1, 1, 1)
    assert not summary["ok"] and summary["time_s"] == 2.5
    assert summary["problems"] == [
        {"test": "tests.test_a::test_bad", "kind": "failure", "message": "assert 1 == 2"},
        {"test": "tests.test_b::test_err", "kind": "error", "message": "fixture broke"},
    ]
    out = tmp_path / "summary.json"
    assert gpu_check_report.main(["junit", str(xml), "--out", str(out)]) == 1
    assert json.loads(out.read_text())["failures"] == 1
    assert gpu_check_report.main(["junit", str(tmp_path / "missing.xml")]) == 1

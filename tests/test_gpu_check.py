"""benchmarks/gpu_check.sh, the one command for a GPU machine, run here in its smoke mode: the same parts,
files and records as on an H100, with tiny shapes on the CPU (the Triton kernels in the interpreter). `quick`,
the first look at a machine (issue #15), runs its five parts in order; smoke runs write to the ignored
benchmarks/results/local/; a Python that cannot install the checkout is named with the one to use instead."""

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
pytestmark = pytest.mark.slow  # smoke runs of the whole script, about 3 minutes
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
    assert result.returncode == 2 and "PART: quick | tests | cifar | imagenet | step | all" in result.stderr
    result = run_check("--fast", "quick", out=tmp_path, timeout=60)
    assert result.returncode == 2 and "unknown option '--fast'" in result.stderr


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


# --- quick: (a) to (e) in one call ------------------------------------------------------------------------------
QUICK_PARTS = ("a_env", "b_tests", "c_loss", "d_step_resume", "e_imagenet_step")


@pytest.fixture(scope="module")
def quick_smoke(tmp_path_factory):
    """One `gpu_check.sh --smoke --out DIR quick`, as CI runs it."""
    out = tmp_path_factory.mktemp("quick")
    environ = {**os.environ, "PYTHON": sys.executable}
    environ.pop("TRITON_INTERPRET", None)
    environ.pop("OUT", None)
    result = subprocess.run(["bash", str(SCRIPT), "--smoke", "--out", str(out), "quick"], env=environ,
                            capture_output=True, text=True, timeout=900, check=False)
    return result, out


def test_quick_smoke_runs_its_five_parts_in_order_and_records_each(quick_smoke):
    result, out = quick_smoke
    log = result.stdout
    starts = [log.index(f"== quick_{part}: limit") for part in QUICK_PARTS]
    assert starts == sorted(starts), log[-3000:]
    for part in QUICK_PARTS:
        status = json.loads(only(out, f"smoke_gpu_check_quick_{part}_cpu_*.json").read_text())
        assert status["smoke"] and not status["timed_out"] and status["seconds"] <= status["limit_s"] + 25, status
        assert status["outputs"] and all(status["outputs"].values()), status  # every promised file exists
        assert only(out, f"smoke_gpu_check_quick_{part}_cpu_*.log").read_text()
    assert "quick check:" in log and "quick_e_imagenet_step" in log.split("quick check:")[1]  # the summary table

    env = json.loads(only(out, "smoke_quick_a_env_cpu_*.json").read_text())
    assert env["ok"] and env["smoke"] and env["versions"]["torch"] and env["versions"]["triton"]
    launcher = env["triton_launcher"]
    assert launcher["kernel_ok"] and launcher["interpreter"] and launcher["first_launch_s"] is not None
    assert "[quick a] trivial Triton kernel: ok, in Triton's interpreter" in log

    tests = json.loads(only(out, "smoke_quick_b_tests_cpu_*.json").read_text())
    assert tests["ok"] and tests["tests"] > 0 and tests["skipped"] == tests["tests"]  # GPU tests skip on a CPU

    loss = json.loads(only(out, "smoke_quick_c_loss_cpu_*.json").read_text())
    rows = {r["impl"]: r for r in loss["results"]}
    assert set(rows) == {"triton", "hybrid", "eager", "compile"} and all(r["status"] == "ok" for r in rows.values())
    assert [s["name"] for s in loss["shapes"]] == ["smoke_cifar_like"] and loss["kernel_sizes"] == [3]
    assert rows["triton"]["triton_interpreter"] and rows["hybrid"]["triton_interpreter"]
    assert not rows["eager"]["triton_interpreter"] and not rows["compile"]["triton_interpreter"]
    assert "triton [triton-interpreter]" in log and "hybrid [triton-interpreter]" in log

    step = json.loads(only(out, "smoke_quick_d_step_resume_cpu_*.json").read_text())
    assert step["setting"]["train_compile"] == "step" and step["setting"]["compile_backend"] == "aot_eager"
    assert {r["segment"] for r in step["steps"]} == {"first", "resumed"}
    assert all(r["lr_effective"] is not None and r["lr_scheduled"] > 0 for r in step["steps"])
    assert step["checks"]["resume_continues_schedule"] and step["checks"]["lr_moved_ratio"] > 1.05
    assert step["segments"]["first"]["last_pt"]  # the resume started from a checkpoint

    imagenet = json.loads(only(out, "smoke_quick_e_imagenet_step_cpu_*.json").read_text())
    assert imagenet["ok"] and imagenet["smoke"] and imagenet["setting"]["feed_backend"] == "hybrid"
    assert imagenet["median_ms"] > 0 and imagenet["images_per_sec"] > 0 and imagenet["triton_interpreter"]
    assert imagenet["warmup"]["warmup_steps"] >= 1 and imagenet["timing"]["compiles_while_timed"] == 0


def test_quick_smoke_step_resume_applies_the_schedule_s_lr_after_the_resume(quick_smoke):
    result, out = quick_smoke
    step = json.loads(only(out, "smoke_quick_d_step_resume_cpu_*.json").read_text())
    assert step["ok"], step["problems"]
    assert result.returncode == 0, result.stdout[-3000:]


def test_the_step_check_catches_an_lr_that_does_not_follow_the_schedule():
    import gpu_quick

    def rows(segment, lrs, applied, replay=False):
        return [{"segment": segment, "index": i, "replay": replay, "sync_checked": replay, "compiles": 0,
                 "lr_scheduled": lr, "lr_effective": eff, "lr_tensor": eff} for i, (lr, eff) in
                enumerate(zip(lrs, applied))]

    first = rows("first", [0.1, 0.09, 0.08], [0.1, 0.09, 0.08])
    good = first + rows("resumed", [0.07, 0.06], [0.07, 0.06])
    checks, problems = gpu_quick.step_checks(good, cuda=False)
    assert problems == [] and checks["resume_continues_schedule"]
    stale = first + rows("resumed", [0.07, 0.06], [0.1, 0.1])  # a graph replaying the lr of before the resume
    _, problems = gpu_quick.step_checks(stale, cuda=False)
    assert any("resumed: the lr steps [0, 1] applied is not the schedule's" in p for p in problems), problems
    restarted = first + rows("resumed", [0.1, 0.09], [0.1, 0.09])
    _, problems = gpu_quick.step_checks(restarted, cuda=False)
    assert any("started over" in p for p in problems)
    _, problems = gpu_quick.step_checks(first + rows("resumed", [0.07], [0.07]), cuda=True)
    assert any("graph replays" in p for p in problems)  # on a GPU the graph must have been replayed


# --- where smoke runs write, and which Python to use ----------------------------------------------------------
def run_with_python(python: Path, *args) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET")}
    return subprocess.run(["bash", str(SCRIPT), *args], env={**environ, "PYTHON": str(python)}, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def broken_python(tmp_path) -> Path:
    """A Python that can neither import feed_fast nor install it (as a stock python3 without wheel)."""
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\necho \"error: invalid command 'bdist_wheel'\" >&2\nexit 1\n")
    python.chmod(0o755)
    return python


def test_a_python_that_cannot_install_the_checkout_is_named_with_the_one_to_use(broken_python):
    result = run_with_python(broken_python, "--smoke", "--out", str(broken_python.parent / "out"), "quick")
    assert result.returncode == 3
    assert "installing the checkout failed" in result.stderr
    assert f"{broken_python} (Python not runnable) cannot run this checkout" in result.stderr
    assert f"PYTHON={REPO}/.venv/bin/python benchmarks/gpu_check.sh" in result.stderr
    assert "means this one lacks them" in result.stderr and "setuptools>=77" in result.stderr


def test_smoke_runs_write_to_the_ignored_local_folder_unless_told(broken_python):
    local = REPO / "benchmarks" / "results" / "local"
    result = run_with_python(broken_python, "--smoke", "quick")
    assert f"out: {local}" in result.stdout  # resolved (and created) before the install is tried
    ignored = subprocess.run(["git", "check-ignore", "-q", str(local / "smoke_quick_a_env_cpu.json")], cwd=REPO,
                             check=False)
    assert ignored.returncode == 0, "benchmarks/results/local/ must be ignored by git"
    result = run_with_python(broken_python, "quick")
    assert f"out: {REPO / 'benchmarks' / 'results'}\n" in result.stdout  # a GPU run's figures are for committing
    told = broken_python.parent / "chosen"
    result = run_with_python(broken_python, "--smoke", f"--out={told}", "quick")
    assert f"out: {told}" in result.stdout and told.is_dir()

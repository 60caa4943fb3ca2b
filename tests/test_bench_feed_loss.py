"""The FEED loss benchmark: a pytest-benchmark case (run once in CI by --benchmark-disable) and the JSON
script benchmarks/bench_feed_loss.py in smoke mode. Nothing here asserts a speed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "bench_feed_loss.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_feed_loss", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def fused_importable() -> bool:
    try:
        import feed_fast.fused  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_torch_backend_training_step(benchmark, kernel_size):
    shape = bench.SMOKE_SHAPES[1]
    inputs = bench.make_inputs(shape, kernel_size, torch.device("cpu"))
    loss = benchmark(bench.training_step, bench.loss_function("torch", "aot_eager"), inputs)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item()) and loss.item() > 0
    students, teachers, weights, biases = inputs
    assert [s.dtype for s in students] == [torch.bfloat16] * len(shape.teachers)
    assert [w.dtype for w in weights] == [torch.bfloat16] * len(shape.teachers)
    for x in (*students, *weights, *biases):
        assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0
    assert all(t.grad is None for t in teachers)


def test_bench_inputs_follow_the_shape_set():
    shape = bench.FULL_SHAPES[2]  # the ResNet-50 teacher: channels differ between teachers
    tiny = bench.ShapeSet("tiny", 2, shape.student, 3, tuple((c // 256, 2, 2) for c, _, _ in shape.teachers))
    students, teachers, weights, _ = bench.make_inputs(tiny, 3, torch.device("cpu"))
    assert [tuple(t.shape) for t in teachers] == [(2, 2, 2, 2), (2, 2, 2, 2), (2, 8, 2, 2)]
    assert [tuple(s.shape) for s in students] == [(2, 3, 2, 2)] * 3
    assert [tuple(w.shape) for w in weights] == [(2, 3, 3, 3), (2, 3, 3, 3), (8, 3, 3, 3)]


def test_full_shapes_are_the_issue_shapes():
    shapes = {s.name: s for s in bench.FULL_SHAPES}
    assert shapes["cifar"].batch == 128 and shapes["cifar"].width == 64
    assert shapes["cifar"].teachers == ((64, 8, 8),) * 3
    assert shapes["imagenet"].batch == 256 and shapes["imagenet"].teachers == ((512, 7, 7),) * 3
    assert (2048, 7, 7) in shapes["imagenet_r50_teacher"].teachers
    assert bench.FEATURE_DTYPE == torch.bfloat16 and bench.HEAD_DTYPE == torch.bfloat16
    assert set(bench.KERNEL_SIZES) == {1, 3}


def test_fused_case_is_skipped_with_a_reason(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if fused_importable():
        assert "TRITON_INTERPRET" in bench.fused_skip_reason(cpu, smoke=True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if fused_importable():
        assert bench.fused_skip_reason(cpu, smoke=True) is None
        assert "--smoke" in bench.fused_skip_reason(cpu, smoke=False)
    monkeypatch.setitem(sys.modules, "feed_fast.fused", None)  # as before the kernels existed
    assert "fused kernels not available" in bench.fused_skip_reason(cpu, smoke=True)


def test_smoke_run_writes_the_json_report(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {out}" in result.stdout
    report = json.loads(out.read_text())

    assert report["mode"] == "smoke"
    assert any("not the op's speed" in note for note in report["notes"])
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["python"].count(".") == 2 and "triton" in report["versions"]
    assert report["settings"]["timer"] == "perf_counter" and report["settings"]["triton_interpret"] is True
    assert report["dtypes"]["students"] == "bfloat16" and report["dtypes"]["weights"] == "bfloat16"
    shape_names = [s["name"] for s in report["shapes"]]
    assert shape_names == [s.name for s in bench.SMOKE_SHAPES]

    results = {(r["shape"], r["kernel_size"], r["impl"]): r for r in report["results"]}
    assert set(results) == {(s, k, i) for s in shape_names for k in (3, 1) for i in bench.IMPLS}
    for (shape, kernel_size, impl), r in results.items():
        if impl in bench.KERNEL_IMPLS and not fused_importable():
            assert r["status"] == "skipped" and "fused kernels not available" in r["note"]
            continue
        assert r["status"] == "ok", r
        assert r["median_ms"] > 0 and r["iters"] == report["settings"]["iters"]
        assert r["peak_extra_mib"] is None  # CPU: no allocator statistics
        assert math.isfinite(r["loss"]) and r["loss"] > 0

    assert {(s["shape"], s["kernel_size"]) for s in report["speedups"]} == {
        (s, k) for s in shape_names for k in (3, 1)
    }
    for row in report["speedups"]:
        assert row["compile_speedup_vs_eager"] > 0
        assert row["compile_loss_rel_diff"] < 1e-5
        assert row["fused_memory_vs_eager"] is None and row["hybrid_memory_vs_eager"] is None
        if fused_importable():
            for name in ("fused", "hybrid"):
                assert row[f"{name}_speedup_vs_eager"] > 0 and row[f"{name}_speedup_vs_compile"] > 0
                assert row[f"{name}_loss_rel_diff"] < 1e-3  # the same loss as eager: bf16 inputs, fp32 math


@pytest.mark.gpu
def test_full_run_on_gpu_reports_cuda_timings_and_memory(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    args = ["--full", "--shapes", "cifar", "--warmup", "2", "--iters", "5", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["device"]["type"] == "cuda" and report["settings"]["timer"] == "cuda_events"
    for r in report["results"]:
        assert r["status"] == "ok", r
        assert r["median_ms"] > 0 and r["peak_extra_mib"] > 0
    for row in report["speedups"]:
        assert row["fused_memory_vs_eager"] > 0 and row["fused_loss_rel_diff"] < 1e-2
        assert row["hybrid_memory_vs_eager"] > 0 and row["hybrid_loss_rel_diff"] < 1e-2


def test_default_output_path_commits_only_full_gpu_runs():
    cpu_path = bench.default_out(torch.device("cpu"), smoke=True)
    assert bench.RESULTS_DIR not in cpu_path.parents and cpu_path.name == "feed_loss_cpu_smoke.json"
    assert bench.device_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"


def test_bad_arguments_are_refused(capsys):
    assert bench.main(["--shapes", "no_such_shape", "--out", os.devnull]) == 2
    assert "no_such_shape" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--iters", "0"])
    assert "--iters must be >= 1" in capsys.readouterr().err

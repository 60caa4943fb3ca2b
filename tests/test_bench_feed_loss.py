"""benchmarks/bench_feed_loss.py and its helpers: the grid, the eager baseline, the probes, and a smoke run whose
structural figures are real properties of the op (bytes saved for backward, launches per step vs K).
Nothing here asserts a speed."""

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

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))  # the script's sibling modules, as when it runs as a script

import feed_loss_impls as impls
import feed_loss_probes as probes
import feed_loss_shapes as grid

from feed_fast import feed_loss


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_feed_loss", BENCH_DIR / "bench_feed_loss.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


bench = load_bench()
CPU = torch.device("cpu")
pytestmark = pytest.mark.slow  # the script's smoke grid in Triton's interpreter


def fused_importable() -> bool:
    try:
        import feed_fast.ops.fused  # noqa: F401
    except ImportError:
        return False
    return True


# --- the grid ---------------------------------------------------------------------------------------------


def test_full_shapes_are_the_issue_shapes():
    shapes = {s.name: s for s in grid.FULL_SHAPES}
    assert shapes["cifar"].batch == 128 and shapes["cifar"].width == 64
    assert shapes["cifar"].teachers == ((64, 8, 8),) * 3
    assert shapes["imagenet"].batch == 256 and shapes["imagenet"].teachers == ((512, 7, 7),) * 3
    assert shapes["imagenet_r50_teacher"].teachers == ((512, 7, 7), (512, 7, 7), (2048, 7, 7))
    assert grid.FEATURE_DTYPE == grid.HEAD_DTYPE == grid.AUTOCAST_DTYPE == torch.bfloat16
    assert grid.KERNEL_SIZES == (3, 1) and grid.LAYOUTS == ("channels_last", "nchw")


@pytest.mark.parametrize("layout", grid.LAYOUTS)
def test_inputs_follow_the_shape_and_the_layout(layout):
    tiny = grid.ShapeSet("tiny", 2, (6, 3, 3), 3, ((2, 3, 3), (2, 3, 3), (8, 3, 3)))
    inputs = grid.make_inputs(tiny, 3, CPU, layout)
    assert [tuple(t.shape) for t in inputs.teachers] == [(2, 2, 3, 3), (2, 2, 3, 3), (2, 8, 3, 3)]
    assert [tuple(h.shape) for h in inputs.head_inputs] == [(2, 3, 3, 3)] * 3
    assert [tuple(w.shape) for w in inputs.weights] == [(2, 3, 3, 3), (2, 3, 3, 3), (8, 3, 3, 3)]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for x in (*inputs.head_inputs, *inputs.teachers, *inputs.weights):
        assert x.is_contiguous(memory_format=fmt) and x.dtype == torch.bfloat16
    if layout == "channels_last":  # really channels-last, not a shape where both layouts coincide
        assert not inputs.head_inputs[0].is_contiguous()
    assert all(x.requires_grad for x in inputs.leaves()) and not any(t.requires_grad for t in inputs.teachers)
    with pytest.raises(ValueError, match="layout must be one of"):
        grid.make_inputs(tiny, 3, CPU, "nhwc")
    with pytest.raises(ValueError, match="kernel_size must be one of"):
        grid.make_inputs(tiny, 5, CPU)


def test_cost_model_of_the_imagenet_step():
    imagenet = {s.name: s for s in grid.FULL_SHAPES}["imagenet"]
    # 3 convs x 3 teachers x 2 * 256 * 512 * 512 * 9 * 49: the issue's "0.53 TFLOP needed".
    assert grid.useful_flops(imagenet, 3) == 3 * 3 * 2 * 256 * 512 * 512 * 9 * 49
    assert round(grid.useful_flops(imagenet, 3) / 1e12, 2) == 0.53
    assert grid.useful_flops(imagenet, 1) * 9 == grid.useful_flops(imagenet, 3)
    feature = 256 * 512 * 49 * 2
    weight = 512 * 512 * 9 * 2
    assert grid.input_bytes(imagenet, 3) == 3 * (2 * feature + weight + 512 * 2)
    assert grid.minimum_bytes(imagenet, 3) == 3 * (3 * feature + 2 * weight + 2 * 512 * 2)


def test_rotation_spans_twice_the_l2():
    for shape in grid.FULL_SHAPES:
        for kernel_size in grid.KERNEL_SIZES:
            sets = grid.rotation_sets(shape, kernel_size)
            per_set = grid.input_bytes(shape, kernel_size)
            assert sets >= 2 and sets * per_set >= 2 * grid.H100_L2_BYTES
            assert sets == 2 or (sets - 1) * per_set < 2 * grid.H100_L2_BYTES  # no more than needed
    assert grid.rotation_sets({s.name: s for s in grid.FULL_SHAPES}["cifar"], 3) > 10  # 6 MB a set


# --- the implementations ------------------------------------------------------------------------------------


def test_eager_baseline_computes_the_feed_loss():
    """The user-written baseline and our reference are the same loss (fp32, no autocast): the benchmark
    compares implementations of one thing."""
    gen = torch.Generator().manual_seed(3)
    heads = [torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64) for _ in range(2)]
    teachers = [torch.randn(3, c, 5, 5, generator=gen, dtype=torch.float64) for c in (6, 2)]
    weights = [torch.randn(c, 4, k, k, generator=gen, dtype=torch.float64) for c, k in ((6, 3), (2, 1))]
    biases = [torch.randn(c, generator=gen, dtype=torch.float64) for c in (6, 2)]
    eager = impls.eager_feed_loss(heads, teachers, weights, biases)
    reference = feed_loss(heads, teachers, weights, biases, beta=grid.BETA, negative_slope=grid.NEGATIVE_SLOPE,
                          backend="torch")
    torch.testing.assert_close(eager, reference, rtol=1e-12, atol=0)


def test_every_impl_runs_a_training_step():
    shape = grid.SMOKE_SHAPES[1]
    for impl in impls.IMPLS:
        if impl in impls.KERNEL_IMPLS and not fused_importable():
            continue
        inputs = grid.make_inputs(shape, 3, CPU)
        loss = impls.training_step(impls.make_loss_fn(impl, "aot_eager"), inputs)
        assert loss.dtype == torch.float32 and math.isfinite(loss.item()) and loss.item() > 0, impl
        for x in inputs.leaves():
            assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0, impl
        assert all(t.grad is None for t in inputs.teachers)
    with pytest.raises(ValueError, match="impl must be one of"):
        impls.make_loss_fn("cudnn")


# --- the probes ---------------------------------------------------------------------------------------------


def test_busy_time_is_the_union_of_kernel_intervals():
    assert probes.busy_us([]) == 0
    assert probes.busy_us([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    summary = probes.summarize_device_events(
        [("gemm", 0, 10), ("Memset (Device)", 10, 11), ("l1", 30, 40), ("gemm", 35, 36)], steps=2, wall_ms=0.1
    )
    assert summary["kernels_per_step"] == 1.5 and summary["device_ops_per_step"] == 2
    assert summary["gpu_busy_ms_per_step"] == pytest.approx(0.0105)
    assert summary["profiled_wall_ms_per_step"] == pytest.approx(0.05)
    assert probes.profile_device(lambda i: None, 2, CPU) is None  # no GPU profile off a GPU


def test_launch_count_sees_work_not_views_or_allocations():
    x = torch.randn(4, 3, requires_grad=True)

    def step():
        y = (x.view(3, 4).t() * 2 + 1).sum()  # mul, add, sum; view/t/empty launch nothing
        torch.empty(5)
        y.backward()

    launches = probes.count_launches(step)
    assert launches["triton"] == 0
    forward = {"aten.mul.Tensor", "aten.add.Tensor", "aten.sum.default"}
    assert forward <= set(launches["aten_by_op"])
    assert not any(op.split(".")[1] in ("view", "t", "empty", "transpose") for op in launches["aten_by_op"])
    assert launches["total"] == launches["aten"] == sum(launches["aten_by_op"].values())
    assert probes.resolved_plan(launches) == "torch"


def test_saved_bytes_split_inputs_from_extra():
    x = torch.randn(64, requires_grad=True)
    w = torch.randn(64, requires_grad=True)

    def step():
        ((x * w).exp()).sum().backward()  # mul saves x and w (inputs); exp saves its output (extra)

    saved = probes.saved_for_backward(step, [x, w])
    assert saved == {"total_bytes": 3 * 64 * 4, "extra_bytes": 64 * 4, "storages": 3}


@pytest.mark.skipif(not fused_importable(), reason="needs triton")
def test_triton_launches_are_counted_by_kernel():
    inputs = grid.make_inputs(grid.SMOKE_SHAPES[0], 3, CPU)
    loss_fn = impls.make_loss_fn("triton")
    launches = probes.count_launches(lambda: impls.training_step(loss_fn, inputs))
    assert launches["triton"] == sum(launches["triton_by_kernel"].values()) >= 2  # at least 1 forward, 1 backward
    # The interpreter's own tensor work inside a kernel is not counted as launches.
    assert launches["aten"] < 30
    assert probes.resolved_plan(launches) == "triton"


# --- a smoke run of the script: the JSON, and the structural figures it measures for real ------------------

SMOKE_ARGS = ["--smoke", "--shapes", "smoke_cifar_like", "--kernel-sizes", "3", "--iters", "1"]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    """One smoke run of the script as a user runs it. A subprocess, not main(): under pytest's deeper Python
    stack, Python 3.11 maps and unmaps a 16 KB frame chunk on every call at one depth in the interpreter's
    hot loop (650k mmap calls, as much system time as user time), which doubles this run's wall time."""
    out = tmp_path_factory.mktemp("bench") / "feed_loss.json"
    result = subprocess.run(
        [sys.executable, str(BENCH_DIR / "bench_feed_loss.py"), *SMOKE_ARGS, "--out", str(out)],
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600, check=False,
    )
    assert f"wrote {out}" in result.stdout, result.stdout + result.stderr
    if fused_importable():  # the table labels the interpreter's rows
        assert "triton [triton-interpreter]" in result.stdout and "hybrid [triton-interpreter]" in result.stdout
    return result.returncode, json.loads(out.read_text())


def test_smoke_run_writes_the_json_report(smoke_report):
    code, report = smoke_report
    assert code == 0
    assert report["mode"] == "smoke" and any("not the op's speed" in note for note in report["notes"])
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert report["versions"]["torch"] == torch.__version__ and "triton" in report["versions"]
    assert report["settings"]["timer"] == "perf_counter" and report["settings"]["triton_interpret"] is True
    assert report["settings"]["limits"]["bf16_dense_tflops"] == 800 and report["settings"]["baseline"] == "eager"
    assert report["dtypes"]["head_inputs"] == "bfloat16" and report["dtypes"]["weights"] == "bfloat16"
    assert [s["name"] for s in report["shapes"]] == ["smoke_cifar_like"]

    results = {(r["layout"], r["impl"]): r for r in report["results"]}
    assert set(results) == {(layout, impl) for layout in grid.LAYOUTS for impl in impls.IMPLS}
    # every row says whether it ran in Triton's interpreter: the kernel rows do here, auto (torch on a CPU) not
    for (_, impl), r in results.items():
        assert r["triton_interpreter"] is (impl in impls.KERNEL_IMPLS and fused_importable()), (impl, r)
        if r["status"] == "ok":
            assert r["timing_excludes_compilation"] and r["compiles_while_timed"] == 0 and r["warmup_steps"] >= 0
    for row in report["summary"]:
        assert all(s["triton_interpreter"] is (impl in impls.KERNEL_IMPLS) for impl, s in row["vs_eager"].items())
    if fused_importable():
        assert report["settings"]["kernels_interpreted"] is True
        assert any("[triton-interpreter]" in note for note in report["notes"])
    for (layout, impl), r in results.items():
        if impl in impls.KERNEL_IMPLS and not fused_importable():
            assert r["status"] == "skipped" and "fused kernels not available" in r["note"]
            continue
        assert r["status"] == "ok", r
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["iters"] == 1 and r["sets"] == 2
        assert r["achieved_tflops"] > 0 and r["tflops_fraction_of_limit"] is None  # not an H100
        assert r["peak_extra_mib"] is None and r["profile"] is None  # CPU: no allocator, no device profile
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["saved_for_backward"]["total_bytes"] >= r["saved_for_backward"]["extra_bytes"] > 0
        if impl in impls.COMPILED_IMPLS:
            assert r["launches"] is None  # a compiled graph hides its kernels from the dispatcher
        else:
            assert r["launches"]["total"] > 0
    assert results[("channels_last", "auto")]["resolved_plan"] == "torch"  # auto on the CPU
    if fused_importable():
        assert results[("channels_last", "triton")]["resolved_plan"] == "triton"
        assert results[("channels_last", "hybrid")]["resolved_plan"] == "hybrid"

    for row in report["summary"]:
        vs_eager = row["vs_eager"]
        assert vs_eager["compile"]["loss_rel_diff"] < 1e-5 and vs_eager["compile"]["speedup"] > 0
        for impl, s in vs_eager.items():
            assert s["loss_rel_diff"] < 2e-2, impl  # the same loss: bf16 inputs, fp32 or bf16 math


@pytest.mark.skipif(not fused_importable(), reason="needs triton")
def test_fused_op_saves_at_most_a_quarter_of_eager(smoke_report):
    """Issue #10: the fused op keeps per-sample scalars, eager keeps the head output, u, v, ..."""
    _, report = smoke_report
    for row in report["summary"]:
        assert row["vs_eager"]["triton"]["saved_extra_ratio"] <= 0.25, row


@pytest.mark.skipif(not fused_importable(), reason="needs triton")
def test_fused_launches_do_not_grow_with_k(smoke_report):
    """Issue #10: one launch set for all K teachers. Channels-last is how the trainer calls the op: there every
    launch per step (Triton kernels and aten ops alike) is independent of K; in every layout the Triton
    launches are."""
    _, report = smoke_report
    sweeps = {sweep["layout"]: sweep for sweep in report["launches_vs_teachers"]}
    assert set(sweeps) == set(grid.LAYOUTS)
    for layout, sweep in sweeps.items():
        assert sweep["shape"] == "smoke_cifar_like" and sweep["kernel_size"] == 3
        triton = sweep["by_impl"]["triton"]
        assert triton["teachers"] == [1, 2, 3, 4]
        assert len(set(triton["triton"])) == 1 and triton["triton"][0] >= 2, layout
        eager = sweep["by_impl"]["eager"]
        assert eager["total"] == sorted(eager["total"]) and eager["total"][3] > eager["total"][0]  # eager grows
        assert not eager["constant_in_k"] and eager["ops_growing_with_k"]
    channels_last = sweeps["channels_last"]["by_impl"]["triton"]
    assert channels_last["constant_in_k"] and not channels_last["ops_growing_with_k"], channels_last


def test_budget_stops_new_cases_and_keeps_the_json(tmp_path):
    out = tmp_path / "budget.json"
    before = torch.get_num_threads()
    try:
        assert bench.main(["--smoke", "--budget-s", "0", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    report = json.loads(out.read_text())
    assert report["results"] and all(r["status"] == "skipped" for r in report["results"])
    assert "time budget" in report["results"][0]["note"] and report["launches_vs_teachers"] == []


def test_kernel_cases_are_skipped_with_a_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if fused_importable():
        assert "TRITON_INTERPRET" in impls.kernel_skip_reason(CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if fused_importable():
        assert impls.kernel_skip_reason(CPU) is None
    monkeypatch.setitem(sys.modules, "feed_fast.ops.fused", None)  # as on a platform without triton
    assert "fused kernels not available" in impls.kernel_skip_reason(CPU)


def test_spread_and_default_output():
    assert bench.spread([3.0]) == {"p20_ms": 3.0, "median_ms": 3.0, "p80_ms": 3.0, "min_ms": 3.0}
    s = bench.spread([float(v) for v in range(1, 11)])
    assert s["p20_ms"] == pytest.approx(2.8) and s["median_ms"] == 5.5 and s["p80_ms"] == pytest.approx(8.2)
    cpu_path = bench.default_out(CPU, smoke=True)  # not for committing: the folder git ignores
    assert cpu_path.parent == bench.LOCAL_RESULTS_DIR and cpu_path.name == "feed_loss_cpu_smoke.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(cpu_path)], cwd=BENCH_DIR.parent, check=False)
    assert ignored.returncode == 0
    assert bench.slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    h100 = bench.roofline(grid.FULL_SHAPES[1], 3, 1000.0, "NVIDIA H100 80GB HBM3")
    assert h100["tflops_fraction_of_limit"] == pytest.approx(grid.useful_flops(grid.FULL_SHAPES[1], 3) / 1e12 / 800)


def test_without_a_gpu_the_script_runs_the_kernel_rows_in_the_interpreter(tmp_path):
    """`make bench` on a CPU: nobody sets TRITON_INTERPRET, and the triton and hybrid rows still run (in the
    interpreter, labelled), where they used to be skipped."""
    if not fused_importable():
        pytest.skip("needs triton")
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(BENCH_DIR / "bench_feed_loss.py"), "--shapes", "smoke_cifar_like", "--kernel-sizes", "1",
         "--layouts", "channels_last", "--impls", "triton", "eager", "--iters", "1", "--no-sweep", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["impl"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["triton"]["status"] == "ok" and rows["triton"]["triton_interpreter"] is True
    assert rows["eager"]["triton_interpreter"] is False
    assert "triton [triton-interpreter]" in result.stdout


def test_a_timing_with_a_compile_in_it_is_redone_or_left_out():
    import warmup

    compiled = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    sizes = iter(range(1, 100))

    def timed(start):  # every call a new shape: Dynamo compiles each time
        compiled(torch.ones(next(sizes)))
        return [1.0]

    times, record = warmup.time_without_compiles(timed, lambda start: {"warmup_steps": 0})
    assert times is None and record["compiles_while_timed"] == warmup.MAX_RETIMES + 1
    assert record["retimed"] == warmup.MAX_RETIMES

    steady = torch.compile(lambda x: x + 1, backend="eager", dynamic=False)
    x = torch.ones(3)
    warmed = warmup.warm_up(lambda i: steady(x), min_steps=1, max_steps=10)
    assert warmed["settled"] and warmed["compiles_in_warmup"] == 1 and warmed["warmup_steps"] == 3  # 1 + 2 quiet
    times, record = warmup.time_without_compiles(lambda start: [steady(x) is not None and 1.0], lambda s: {})
    assert times == [1.0] and record == {"compiles_while_timed": 0, "retimed": 0}


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--shapes", "no_such_shape"])
    assert "no_such_shape" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--iters", "0"])
    assert "--iters must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--profile-steps", "-1"])
    assert "--profile-steps must be >= 0" in capsys.readouterr().err


@pytest.mark.gpu
def test_full_run_on_gpu_reports_timings_memory_and_profile(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--full", "--shapes", "cifar", "--kernel-sizes", "3", "--layouts", "channels_last", "--warmup", "2",
            "--iters", "5", "--profile-steps", "2", "--no-sweep", "--impls", "triton", "hybrid", "auto", "eager",
            "--out", str(out)]  # the compile rows are the cifar part of gpu_check.sh: minutes of Inductor here
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    assert report["device"]["type"] == "cuda" and report["settings"]["timer"] == "cuda_events"
    for r in report["results"]:
        assert r["status"] == "ok", r
        assert r["median_ms"] > 0 and r["peak_extra_mib"] > 0 and r["sets"] > 10
        assert r["profile"]["kernels_per_step"] > 0 and r["profile"]["gpu_busy_ms_per_step"] > 0
        assert r["saved_for_backward"]["total_bytes"] > 0
    (row,) = report["summary"]
    assert row["vs_eager"]["triton"]["saved_extra_ratio"] <= 0.25
    for impl, s in row["vs_eager"].items():
        assert s["loss_rel_diff"] < 2e-2 and s["peak_memory_ratio"] > 0, impl

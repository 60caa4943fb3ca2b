"""benchmarks/bench_step.py runs the engine's own step on the CPU (tiny preset) and writes a JSON report that
names the device, versions, shapes and dtypes, with every section of the breakdown for both cases."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_step.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_step_smoke_writes_the_breakdown(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "step.json"
        assert load_bench().main(["--smoke", "--device", "cpu", "--warmup", "1", "--iters", "2",
                                  "--teachers", "2", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    report = json.loads(out.read_text())
    assert report["device"]["type"] == "cpu" and report["versions"]["torch"] == torch.__version__
    assert report["setting"]["teachers"] == 2 and report["setting"]["image_shape"] == [3, 16, 16]
    baseline, pfeed = report["results"]
    assert (baseline["method"], baseline["teachers"], pfeed["method"], pfeed["teachers"]) == ("baseline", 0, "pfeed", 2)
    for result in (baseline, pfeed):
        assert set(result["sections_ms"]) == set(report["setting"]["sections"])
        assert result["step_ms"] > 0 and result["precision"] == "fp32" and result["optimizer_impl"] == "foreach"
        assert result["sections_ms"]["backward"] > 0 and result["sections_ms"]["student_forward"] > 0
    assert baseline["sections_ms"]["teachers"] == 0 and pfeed["sections_ms"]["teachers"] > 0
    assert report["pfeed_over_baseline_step_time"] == pfeed["step_ms"] / baseline["step_ms"]


@pytest.mark.gpu
def test_bench_step_on_cuda_uses_events_streams_and_fused_sgd(tmp_path):
    out = tmp_path / "step.json"
    assert load_bench().main(["--smoke", "--device", "cuda", "--warmup", "2", "--iters", "5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"]["type"] == "cuda"
    for result in report["results"]:
        assert result["optimizer_impl"] == "fused" and result["channels_last"]
        assert result["precision"] in ("bf16", "fp16")
    assert report["results"][1]["sections_ms"]["teachers"] > 0

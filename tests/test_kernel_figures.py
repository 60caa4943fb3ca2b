"""The fused kernels' compiled figures for sm_90 (benchmarks/kernel_figures.py, committed as
benchmarks/results/kernel_figures_sm90.json for Triton 3.8 and 3.6) hold the goals of issue #18 at the shapes
users run (CIFAR: B=128, K=3 x 64x8x8; ImageNet: B=256, K=3 x 512x7x7; bf16 channels-last):

- every kernel of both plans runs at least one wave of 132 CTAs at the CIFAR shape: every SM gets work;
- the software pipeline drains (`cp.async.wait_group 0`) as often in a 3x3 head as in a 1x1 one: once per GEMM
  loop, not once per tap;
- nothing compiled spills: no stack, no local loads or stores;
- channels-last features reach the GEMMs through 16-byte copies only.

The cost model's occupancy table and docs/ops.md's figures table are read from the same file, and `-m slow`
recompiles a case to check the file is current. Reading the JSON needs no GPU and no compiler.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "benchmarks" / "results" / "kernel_figures_sm90.json"
sys.path.insert(0, str(REPO / "benchmarks"))

import kernel_figures  # benchmarks/ is not a package: its scripts import as siblings

from feed_fast.ops.backend_choice import FUSED_CTAS_PER_SM, H100

ROWS = json.loads(FIGURES.read_text())
VERSIONS = sorted({r["triton"] for r in ROWS})
GEMM_KERNELS = {"forward", "grad_preact", "grad_input", "grad_weight"}


def rows(case: str | None = None, triton: str | None = None, kernel: str | None = None) -> list[dict]:
    return [r for r in ROWS if case in (None, r["case"]) and triton in (None, r["triton"])
            and kernel in (None, r["kernel"])]


def test_figures_cover_every_case_kernel_and_both_tritons():
    assert len(VERSIONS) == 2 and VERSIONS[0].startswith("3.6"), VERSIONS
    for case, (*_, plan, _layout, _dtype) in kernel_figures.CASES.items():
        expected = ["forward", "grad_preact", "grad_input", "grad_weight", "grad_reduce"]
        if plan == "hybrid":
            expected = ["forward", "grad_preact", "grad_reduce"]
        for version in VERSIONS:
            assert [r["kernel"] for r in rows(case, version)] == expected, (case, version)


def test_every_kernel_fills_the_gpu_at_the_cifar_shape():
    """At least one CTA per SM (one wave of 132): CIFAR's weight gradient had 27 CTAs before the batch split."""
    short = [(r["case"], r["kernel"], r["ctas"]) for r in ROWS if r["case"].startswith("cifar")
             and r["ctas"] < H100.sms]
    assert not short, short


def test_pipeline_drains_do_not_depend_on_the_tap_count():
    """One pipelined loop over (tap, channel tile): a 3x3 head drains its pipeline as often as a 1x1 head (it
    drained 9 times more often with a loop per tap)."""
    for shape in ("cifar", "imagenet"):
        for version in VERSIONS:
            for kernel in GEMM_KERNELS:
                drains = [r["pipeline_waits"]["cp.async.wait_group"].get("0", 0)
                          for case in (f"{shape}_fused_3x3", f"{shape}_fused_1x1")
                          for r in rows(case, version, kernel)]
                assert drains[0] == drains[1] > 0, (shape, version, kernel, drains)


def test_nothing_compiled_spills():
    spills = [(r["case"], r["kernel"], r["triton"], r["stack_bytes"], r["spill_stores"], r["spill_loads"])
              for r in ROWS if r["stack_bytes"] or r["spill_stores"] or r["spill_loads"]]
    assert not spills, spills


def test_channels_last_features_load_as_16_byte_copies():
    for r in ROWS:
        if r["layout"] == "channels_last" and r["kernel"] in GEMM_KERNELS and r["plan"] == "fused":
            assert set(r["global_loads"]["cp.async"]) == {"16"}, (r["case"], r["kernel"], r["global_loads"])


@pytest.mark.parametrize("occupancy, case", [
    (("fused", "one_tile"), "cifar_fused_3x3"), (("fused", "multi_tile"), "imagenet_fused_3x3"),
    (("hybrid", "one_tile"), "cifar_hybrid_3x3"), (("hybrid", "multi_tile"), "imagenet_hybrid_3x3"),
])
def test_the_cost_model_uses_the_compiled_occupancy(occupancy, case):
    newest = VERSIONS[-1]
    assert FUSED_CTAS_PER_SM[occupancy] == {r["kernel"]: r["ctas_per_sm"] for r in rows(case, newest)}


def test_docs_show_these_figures():
    table = kernel_figures.markdown_table(ROWS, VERSIONS[-1])
    assert table in (REPO / "docs" / "ops.md").read_text(), "regenerate docs/ops.md's table: " + \
        "python benchmarks/kernel_figures.py --table benchmarks/results/kernel_figures_sm90.json"


@pytest.mark.slow
def test_the_committed_figures_are_current():
    """Recompile the CIFAR fused case with the installed Triton: the same figures as committed."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_figures.py"), "--cases",
                           "cifar_fused_3x3", "--out", "-"], capture_output=True, text=True, check=False, timeout=1800,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout)
    fields = ("ctas", "registers", "shared_bytes", "ctas_per_sm", "pipeline_waits", "global_loads", "stack_bytes")
    committed = rows("cifar_fused_3x3", fresh[0]["triton"])
    assert [{f: r[f] for f in fields} for r in fresh] == [{f: r[f] for f in fields} for r in committed]

"""A shortened `feed-fast demo` (tiny models, few epochs) through the real engine, loader and FEED loss:
the table, the plot and the report are produced and their numbers come from the runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from feed_fast.cli import build_parser
from feed_fast.demo.cli import settings_from_args
from feed_fast.demo.results import BASELINE, ENSEMBLE, PFEED, TEACHER
from feed_fast.demo.runner import PLOT_FILE, REPORT_FILE, RESULTS_FILE, TABLE_FILE, run_demo
from feed_fast.models import build_model, count_parameters

TINY = [8, 16, 32]  # CIFAR ResNet widths small enough for a test, same 8x8 feature map as the full ones
# One torch thread: on 2 busy cores, 2 OpenMP threads spinning against other processes run ~20x slower.


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    args = build_parser().parse_args([
        "demo", "--seeds", "2", "--epochs", "3", "--teacher-model", "resnet8", "--student-model", "resnet8", "--batch-size", "32",
        "--teacher-kwargs", "{widths: [16, 32, 64]}", "--student-kwargs", f"{{widths: {TINY}}}",
        "--device", "cpu", "--threads", "1", "--out", str(root / "run"), "--cache", str(root / "cache"),
    ])
    settings = settings_from_args(args)
    lines = []
    threads_before = torch.get_num_threads()
    outcome = run_demo(settings, write=lines.append)
    assert torch.get_num_threads() == threads_before  # --threads applies to the demo only
    return settings, outcome, "\n".join(lines)


def test_every_model_is_in_the_printed_table(short_demo):
    _, outcome, printed = short_demo
    roles = [r.role for r in outcome.results]
    assert roles == [TEACHER] * 3 + [ENSEMBLE] + [BASELINE, PFEED] * 2  # two seeds
    assert [r.seed for r in outcome.results if r.role == PFEED] == [0, 1]
    for label in ("teacher 1", "teacher 2", "teacher 3", "teachers' ensemble", "baseline student (CE only) [2 seeds]",
                  "pFEED student [2 seeds]"):
        assert label in outcome.table
    assert outcome.table in printed and outcome.verdict in printed
    assert "[9/9]" in printed  # progress: data, 3 teachers, ensemble, 2 students x 2 seeds
    assert outcome.verdict.startswith("Over 2 seeds") and " ± " in outcome.table


def test_accuracies_are_real_and_teachers_learned(short_demo):
    _, outcome, _ = short_demo
    for r in outcome.results:
        assert 0.0 <= r.val_top1 <= 100.0
        assert all(0.0 <= a <= 100.0 for a in r.top1_per_epoch)
        if r.role != ENSEMBLE:
            assert len(r.top1_per_epoch) == 3 and r.images_per_sec > 0
            assert r.val_top1 == r.top1_per_epoch[-1]
    for teacher in (r for r in outcome.results if r.role == TEACHER):
        assert teacher.val_top1 > 25.0, teacher  # 10 classes: chance is 10%
    # The ensemble was evaluated, not copied from a member.
    ensemble = next(r for r in outcome.results if r.role == ENSEMBLE)
    assert ensemble.params == 3 * count_parameters(build_model("resnet8", 10, widths=[16, 32, 64]))


def test_student_parameters_are_those_of_the_deployed_model(short_demo):
    _, outcome, _ = short_demo
    expected = count_parameters(build_model("resnet8", 10, widths=TINY))
    students = [r for r in outcome.results if r.role in (BASELINE, PFEED)]
    assert [r.params for r in students] == [expected] * 4
    assert f"{expected:,}" in outcome.table


def test_run_folder_has_report_plot_table_and_results(short_demo):
    settings, outcome, _ = short_demo
    run_dir = settings.out
    assert outcome.report == run_dir / REPORT_FILE and outcome.plot == run_dir / PLOT_FILE
    with Image.open(run_dir / PLOT_FILE) as image:
        assert image.format == "PNG" and image.size[0] > 100
        image.verify()
    report = (run_dir / REPORT_FILE).read_text()
    for text in (outcome.verdict, "| pFEED student [2 seeds] |", "### Per seed", "## Config", "## Versions",
                 "- torch:", "- triton:", "- device: cpu", PLOT_FILE):
        assert text in report
    assert (run_dir / TABLE_FILE).read_text().strip() == outcome.table
    saved = json.loads((run_dir / RESULTS_FILE).read_text())
    assert [r["val_top1"] for r in saved["results"]] == [r.val_top1 for r in outcome.results]


def test_students_ran_through_the_engine_with_their_method(short_demo):
    """The pFEED run logged its FEED terms (one per teacher); the baseline logged none."""
    _, outcome, _ = short_demo
    baseline, pfeed = (next(r for r in outcome.results if r.role == role) for role in (BASELINE, PFEED))
    pfeed_losses, baseline_losses = (
        json.loads((Path(r.run_dir) / "metrics.jsonl").read_text().splitlines()[0])["loss"] for r in (pfeed, baseline)
    )
    assert sum(k.startswith("feed") for k in pfeed_losses) == 3
    assert not any(k.startswith("feed") for k in baseline_losses)

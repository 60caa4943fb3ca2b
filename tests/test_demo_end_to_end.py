"""A shortened `feed-fast demo --compare all --beta-sweep` (tiny models, few steps) through the real engine,
loader and FEED loss: every row trains with its own method, teachers and beta; the table, the verdict, both plots
and the report are produced and their numbers come from the runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from feed_fast.cli import build_parser
from feed_fast.demo.cli import settings_from_args
from feed_fast.demo.results import BASELINE, ENSEMBLE, FT, KD, PFEED, TEACHER, student_rows
from feed_fast.demo.runner import PLOT_FILE, REPORT_FILE, RESULTS_FILE, SWEEP_PLOT_FILE, TABLE_FILE, run_demo
from feed_fast.demo.seed_stats import PairedDifference
from feed_fast.models import build_model, count_parameters

pytestmark = pytest.mark.slow  # a whole short demo: teachers, five students, two seeds
TINY = [8, 16, 32]  # CIFAR ResNet widths small enough for a test, same 8x8 feature map as the full ones
STEPS = 15  # per epoch (of 45): the teachers see 60 batches, each student 30
STUDENT_ROLES = [BASELINE, KD, FT, PFEED, PFEED]  # per seed: KD, FT (beta 500) and the sweep's two pFEED rows
# One torch thread: on 2 busy cores, 2 OpenMP threads spinning against other processes run ~20x slower.


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    args = build_parser().parse_args([
        "demo", "--compare", "all", "--beta-sweep", "100,500", "--seeds", "2", "--epochs", "2",
        "--teacher-epochs", "4", "--teacher-model", "resnet8", "--student-model", "resnet8", "--batch-size", "32",
        "--teacher-kwargs", "{widths: [16, 32, 64]}", "--student-kwargs", f"{{widths: {TINY}}}",
        "--set", f"train.max_steps_per_epoch={STEPS}", "--set", "train.progress=none",
        "--device", "cpu", "--threads", "1", "--out", str(root / "run"), "--cache", str(root / "cache"),
    ])
    settings = settings_from_args(args)
    lines = []
    threads_before = torch.get_num_threads()
    outcome = run_demo(settings, write=lines.append)
    assert torch.get_num_threads() == threads_before  # --threads applies to the demo only
    return settings, outcome, "\n".join(lines)


def test_every_row_is_trained_per_seed_and_printed(short_demo):
    _, outcome, printed = short_demo
    roles = [r.role for r in outcome.results]
    assert roles == [TEACHER] * 3 + [ENSEMBLE] + STUDENT_ROLES * 2  # seed by seed
    assert [r.seed for r in outcome.results if r.role == KD] == [0, 1]
    assert [r.beta for r in outcome.results if r.role in (FT, PFEED)] == [500.0, 100.0, 500.0] * 2
    for label in ("teacher 1", "teacher 2", "teacher 3", "teachers' ensemble",
                  "baseline student (CE only) [2 seeds]", "KD student (3 teachers' logits) [2 seeds]",
                  "FT student (FEED K=1 from teacher 1, β=500) [2 seeds]", "pFEED student (K=3, β=100) [2 seeds]",
                  "pFEED student (K=3, β=500) [2 seeds]"):
        assert label in outcome.table
    assert outcome.table in printed and outcome.verdict in printed
    assert "[15/15]" in printed  # progress: data, 3 teachers, ensemble, 5 students x 2 seeds
    assert outcome.verdict.startswith("Over 2 seeds") and " ± " in outcome.table
    assert "2 values of beta were tried" in outcome.verdict


def test_accuracies_are_real_and_teachers_learned(short_demo):
    _, outcome, _ = short_demo
    for r in outcome.results:
        assert 0.0 <= r.val_top1 <= 100.0
        if r.role == TEACHER:
            assert len(r.top1_per_epoch) == 4 and r.val_top1 > 20.0, r  # 10 classes: chance is 10%
        elif r.role != ENSEMBLE:
            assert len(r.top1_per_epoch) == 2 and r.images_per_sec > 0
            assert r.val_top1 == r.top1_per_epoch[-1]
    # The ensemble was evaluated, not copied from a member.
    ensemble = next(r for r in outcome.results if r.role == ENSEMBLE)
    assert ensemble.params == 3 * count_parameters(build_model("resnet8", 10, widths=[16, 32, 64]))


def test_student_parameters_are_those_of_the_deployed_model(short_demo):
    _, outcome, _ = short_demo
    expected = count_parameters(build_model("resnet8", 10, widths=TINY))
    students = [r for r in outcome.results if r.role not in (TEACHER, ENSEMBLE)]
    assert [r.params for r in students] == [expected] * 10
    assert f"{expected:,}" in outcome.table


def test_each_row_ran_through_the_engine_with_its_method_teachers_and_beta(short_demo):
    """What each engine run wrote (its config.yaml and its logged loss terms) matches the row."""
    _, outcome, _ = short_demo
    teacher_exports = [str(Path(r.run_dir) / "model.pt") for r in outcome.results if r.role == TEACHER]
    expected = {BASELINE: ("baseline", 0, set()), KD: ("kd", 3, {"kd"}), FT: ("pfeed", 1, {"feed_0"}),
                PFEED: ("pfeed", 3, {"feed_0", "feed_1", "feed_2"})}
    for r in outcome.results:
        if r.role in (TEACHER, ENSEMBLE):
            continue
        config = yaml.safe_load((Path(r.run_dir) / "config.yaml").read_text())
        method, num_teachers, extra_losses = expected[r.role]
        assert config["method"]["name"] == method and config["train"]["seed"] == r.seed
        assert [t["checkpoint"] for t in config["teachers"]] == teacher_exports[:num_teachers]
        if r.beta is not None:
            assert config["method"]["beta"] == r.beta
        losses = json.loads((Path(r.run_dir) / "metrics.jsonl").read_text().splitlines()[0])["loss"]
        assert set(losses) - {"ce", "total"} == extra_losses, (r.label, losses)


def test_run_folder_has_report_plots_table_and_results(short_demo):
    settings, outcome, _ = short_demo
    run_dir = settings.out
    assert outcome.report == run_dir / REPORT_FILE and outcome.plot == run_dir / PLOT_FILE
    assert outcome.sweep_plot == run_dir / SWEEP_PLOT_FILE
    for plot in (PLOT_FILE, SWEEP_PLOT_FILE):
        with Image.open(run_dir / plot) as image:
            assert image.format == "PNG" and image.size[0] > 100
            image.verify()
    report = (run_dir / REPORT_FILE).read_text()
    for text in (outcome.verdict, "| pFEED student (K=3, β=100) [2 seeds] |", "### Per seed",
                 "### Against the baseline", "## Config", "## Versions", "- torch:", "- triton:", "- device: cpu",
                 PLOT_FILE, SWEEP_PLOT_FILE, "--compare all --beta-sweep 100,500"):
        assert text in report, text
    assert (run_dir / TABLE_FILE).read_text().strip() == outcome.table


def test_saved_comparisons_are_the_paired_differences_of_the_saved_runs(short_demo):
    settings, outcome, _ = short_demo
    saved = json.loads((settings.out / RESULTS_FILE).read_text())
    assert [r["val_top1"] for r in saved["results"]] == [r.val_top1 for r in outcome.results]
    rows = student_rows(outcome.results)
    baseline = {r.seed: r.val_top1 for r in rows[0]}
    assert [c["label"] for c in saved["comparisons"]] == [runs[0].label for runs in rows[1:]]
    for comparison, runs in zip(saved["comparisons"], rows[1:]):
        differences = [r.val_top1 - baseline[r.seed] for r in runs]
        assert comparison["differences"] == pytest.approx(differences)
        assert comparison["wins"] == sum(d > 0 for d in differences)
        paired = PairedDifference.of(baseline, {r.seed: r.val_top1 for r in runs})
        assert comparison["interval"] == pytest.approx(list(paired.interval()))
    assert saved["settings"]["compare"] == ["kd", "ft", "pfeed"] and saved["settings"]["beta_sweep"] == [100.0, 500.0]

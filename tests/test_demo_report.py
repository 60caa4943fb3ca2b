"""The demo's table, verdict, plot and markdown report, from results built in the test."""
from __future__ import annotations

import pytest
from PIL import Image

from feed_fast.demo.report import format_table, markdown_report, plot_students, table_rows
from feed_fast.demo.results import BASELINE, ENSEMBLE, PFEED, TEACHER, RunResult, Spread, verdict
from feed_fast.environment import environment_summary


def make_results(baseline_top1, pfeed_top1, epochs=3):
    results = [
        RunResult(f"teacher {k + 1}", TEACHER, "resnet20", 100 + k, 96.0 + k, 272474, 350.0 + k,
                  [80.0, 90.0, 96.0 + k])
        for k in range(3)
    ]
    results.append(RunResult("teachers' ensemble", ENSEMBLE, "3 x resnet20", None, 98.5, 3 * 272474))
    for seed, (b, p) in enumerate(zip(baseline_top1, pfeed_top1)):
        ramp = [b * (e + 1) / epochs for e in range(epochs)]
        results.append(RunResult("baseline student", BASELINE, "resnet8", seed, b, 78042, 1000.0, ramp))
        results.append(RunResult("pFEED student", PFEED, "resnet8", seed, p, 78042, 400.0, [x + 0.5 for x in ramp[:-1]] + [p]))
    return results


def test_verdict_says_so_when_pfeed_loses_one_seed():
    text = verdict(make_results([95.0], [93.5]))
    assert "did not beat" in text and "1.50 points below" in text


def test_verdict_on_one_winning_seed_warns_about_noise():
    text = verdict(make_results([93.0], [95.25]))
    assert text.startswith("pFEED beat the CE-only baseline on this run by 2.25 points")
    assert "one seed" in text


def test_verdict_over_seeds_reports_spread_and_only_claims_a_clear_win():
    clear = verdict(make_results([90.0, 90.5, 91.0], [94.0, 94.5, 95.0]))
    assert "3 of 3 seeds" in clear and "every seed" in clear and "94.50 ± 0.50" in clear
    mixed = verdict(make_results([90.0, 93.0, 91.0], [92.0, 91.0, 92.5]))
    assert "2 of 3 seeds" in mixed and "not higher on every seed" in mixed and "does not show" in mixed
    within = verdict(make_results([90.0, 90.1, 90.2], [91.0, 90.5, 95.0]))  # wins every seed, but noisy
    assert "3 of 3 seeds" in within and "within the seed-to-seed spread" in within and "does not show" in within
    assert "every seed" not in within.split("Because")[1]
    worse = verdict(make_results([93.0, 93.0], [92.0, 91.0]))
    assert "did not beat" in worse


def test_spread_is_mean_and_sample_std():
    spread = Spread.of([1.0, 2.0, 3.0])
    assert spread.mean == pytest.approx(2.0) and spread.std == pytest.approx(1.0)
    assert Spread.of([5.0]).format() == "5.00"


def test_accuracies_outside_0_100_are_refused():
    with pytest.raises(ValueError, match="percentages"):
        RunResult("x", TEACHER, "resnet20", 0, 0.97, 1, top1_per_epoch=[101.0])
    with pytest.raises(ValueError, match="percentages"):
        RunResult("x", TEACHER, "resnet20", 0, float("nan"), 1)
    with pytest.raises(ValueError, match="role"):
        RunResult("x", "student", "resnet20", 0, 50.0, 1)


def test_table_has_each_teacher_the_ensemble_and_both_students():
    results = make_results([90.0, 91.0, 92.0], [93.0, 94.0, 95.0])
    rows = table_rows(results)
    assert [r[0] for r in rows] == ["teacher 1", "teacher 2", "teacher 3", "teachers' ensemble",
                                    "baseline student (CE only) [3 seeds]", "pFEED student [3 seeds]"]
    assert rows[-1][2] == "94.00 ± 1.00" and rows[-1][4] == "78,042" and rows[-1][3] == "400"
    assert rows[3][3] == "-"  # nothing is trained for the ensemble
    text = format_table(results)
    assert len({len(line) for line in text.splitlines()}) == 1  # fixed width


def test_plot_is_a_valid_png(tmp_path):
    path = plot_students(make_results([90.0, 91.0], [93.0, 92.0]), tmp_path / "val_top1.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    assert not list(tmp_path.glob("*.tmp"))


def test_markdown_report_has_table_config_versions_and_plot():
    info = environment_summary("cpu")
    assert set(info) >= {"python", "torch", "torchvision", "triton", "device"}
    text = markdown_report(make_results([95.0], [93.5]), config={"epochs": 3}, version_info=info,
                           total_seconds=12.5, plot_name="val_top1.png")
    assert "| pFEED student | resnet8 | 93.50 |" in text
    assert "did not beat" in text and "![val top-1 per epoch](val_top1.png)" in text
    assert '"epochs": 3' in text and f"- torch: {info['torch']}" in text and "12.5 s" in text

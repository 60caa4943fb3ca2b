"""The demo's verdict, tables, plots and markdown report, from results built in the test."""
from __future__ import annotations

import pytest
from PIL import Image

from feed_fast.demo.plots import plot_beta_sweep, plot_students
from feed_fast.demo.report import comparison_rows, format_table, markdown_report, per_seed_rows, table_rows
from feed_fast.demo.results import BASELINE, ENSEMBLE, FT, KD, PFEED, TEACHER, RunResult, student_rows
from feed_fast.demo.verdict import ABOVE, BELOW, ONE_SEED, WITHIN, comparisons, verdict
from feed_fast.environment import environment_summary

LABELS = {BASELINE: "baseline student (CE only)", KD: "KD student (3 teachers' logits)",
          FT: "FT student (FEED K=1 from teacher 1, β=500)"}


def pfeed_label(beta):
    return f"pFEED student (K=3, β={beta:g})"


def make_results(rows: dict, epochs: int = 3):
    """rows: {role or (PFEED, beta): [val top-1 per seed]}; the baseline is one of them."""
    results = [RunResult(f"teacher {k + 1}", TEACHER, "resnet20", 100 + k, 96.0 + k, 272474, 350.0 + k,
                         [80.0, 90.0, 96.0 + k], seconds=30.0) for k in range(3)]
    results.append(RunResult("teachers' ensemble", ENSEMBLE, "3 x resnet20", None, 98.5, 3 * 272474))
    seeds = len(next(iter(rows.values())))
    for seed in range(seeds):  # seed by seed, as the runner trains them
        for key, values in rows.items():
            role, beta = key if isinstance(key, tuple) else (key, 500.0 if key == FT else None)
            label = pfeed_label(beta) if role == PFEED else LABELS[role]
            top1 = values[seed]
            ramp = [top1 * (e + 1) / epochs for e in range(epochs)]
            results.append(RunResult(label, role, "resnet8", seed, top1, 78042, 1000.0 - 100 * len(results), ramp,
                                     seconds=10.0 + seed, beta=beta))
    return results


def two_rows(baseline, pfeed):
    return make_results({BASELINE: baseline, (PFEED, 500.0): pfeed})


def test_one_seed_reports_the_gap_and_never_a_win():
    lost = verdict(two_rows([95.0], [93.5]))
    assert lost.startswith("One seed per student") and "1.50 points below" in lost and "did not beat" in lost
    won = verdict(two_rows([93.0], [95.25]))
    assert "2.25 points above the baseline on this run" in won and "beat the baseline" not in won.split("\n")[1]
    tie = verdict(two_rows([93.0], [93.0]))
    assert "the same as the baseline" in tie
    assert comparisons(two_rows([93.0], [95.0]))[0].outcome == ONE_SEED


def test_paired_interval_decides_above_within_below():
    results = make_results({
        BASELINE: [80.0, 90.0, 85.0],
        KD: [81.0, 91.2, 85.9],  # +1.0, +1.2, +0.9 on every seed: interval above zero despite the rows' spread
        FT: [82.0, 89.0, 90.0],  # +2, -1, +5: mean +2 but noisy
        (PFEED, 500.0): [78.0, 88.1, 83.2],  # -2.0, -1.9, -1.8: below
    })
    by_label = {c.label: c for c in comparisons(results)}
    assert [c.outcome for c in by_label.values()] == [ABOVE, WITHIN, BELOW]
    kd = by_label[LABELS[KD]]
    assert kd.paired.mean == pytest.approx(31.0 / 30.0) and kd.paired.wins == 3
    assert kd.top1.mean == pytest.approx((81.0 + 91.2 + 85.9) / 3) and kd.baseline.mean == pytest.approx(85.0)
    text = verdict(results)
    assert text.startswith("Over 3 seeds")
    summary = text.splitlines()[0]
    assert f"Beat the baseline: {LABELS[KD]}." in summary
    assert f"Within the seed-to-seed spread: {LABELS[FT]}." in summary
    assert f"Below the baseline: {pfeed_label(500)}." in summary
    lines = dict(line.split(": ", 1) for line in text.splitlines()[1:])
    assert "higher on 3 of 3 seeds" in lines["- " + LABELS[KD]] and "It beat the baseline" in lines["- " + LABELS[KD]]
    assert "higher on 2 of 3 seeds" in lines["- " + LABELS[FT]]
    assert "does not show that it beat the baseline" in lines["- " + LABELS[FT]]
    assert "It scored below the baseline" in lines["- " + pfeed_label(500)]
    assert "+2.00 ± 3.00 points" in lines["- " + LABELS[FT]]  # diffs 2, -1, 5
    assert "With 2 seeds" not in text


def test_a_lower_mean_within_the_spread_is_not_called_a_win():
    text = verdict(two_rows([90.0, 92.0], [91.0, 89.0]))  # +1, -3
    assert "Beat the baseline: none." in text and "It did not beat the baseline." in text
    assert "With 2 seeds the interval is wide (its t factor is 12.7)" in text


def test_a_sweep_warns_that_the_best_beta_is_picked_after_the_fact():
    results = make_results({BASELINE: [90.0, 91.0], (PFEED, 50.0): [91.0, 92.0], (PFEED, 500.0): [89.0, 90.5]})
    assert "2 values of beta were tried" in verdict(results)
    assert "values of beta" not in verdict(two_rows([90.0, 91.0], [91.0, 92.0]))


def test_a_lone_baseline_has_nothing_to_compare():
    results = make_results({BASELINE: [90.0]})
    assert "nothing to compare" in verdict(results)
    with pytest.raises(ValueError, match="no baseline"):
        comparisons([r for r in two_rows([90.0], [91.0]) if r.role != BASELINE])


def test_accuracies_outside_0_100_are_refused():
    with pytest.raises(ValueError, match="percentages"):
        RunResult("x", TEACHER, "resnet20", 0, 0.97, 1, top1_per_epoch=[101.0])
    with pytest.raises(ValueError, match="percentages"):
        RunResult("x", TEACHER, "resnet20", 0, float("nan"), 1)
    with pytest.raises(ValueError, match="role"):
        RunResult("x", "student", "resnet20", 0, 50.0, 1)


def test_table_has_each_teacher_the_ensemble_and_every_student_row():
    results = make_results({BASELINE: [90.0, 91.0, 92.0], KD: [91.0, 91.0, 91.0], FT: [92.0, 92.0, 92.0],
                            (PFEED, 500.0): [93.0, 94.0, 95.0]})
    rows = table_rows(results)
    assert [r[0] for r in rows] == ["teacher 1", "teacher 2", "teacher 3", "teachers' ensemble",
                                    *(f"{label} [3 seeds]" for label in (*LABELS.values(), pfeed_label(500)))]
    assert rows[-1][2] == "94.00 ± 1.00" and rows[-1][4] == "78,042"
    assert rows[3][3] == "-"  # nothing is trained for the ensemble
    text = format_table(results)
    assert len({len(line) for line in text.splitlines()}) == 1  # fixed width
    assert [len(runs) for runs in student_rows(results)] == [3, 3, 3, 3]


def test_per_seed_and_comparison_tables():
    results = make_results({BASELINE: [90.0, 91.0], KD: [91.5, 90.0]})
    headers, rows = per_seed_rows(results)
    assert headers == ("seed", LABELS[BASELINE], LABELS[KD])
    assert rows == [("0", "90.00", "91.50 (+1.50)"), ("1", "91.00", "90.00 (-1.00)")]
    (row,) = comparison_rows(results)
    assert row[0] == LABELS[KD] and row[1] == "90.75 ± 1.06" and row[2] == "+0.25 ± 1.77"
    assert row[3].startswith("[-") and row[4] == "1 of 2" and row[5] == "within the spread"


def test_student_plot_is_a_valid_png(tmp_path):
    results = make_results({BASELINE: [90.0, 91.0], KD: [91.0, 90.0], (PFEED, 50.0): [93.0, 92.0],
                            (PFEED, 500.0): [92.0, 92.5]})
    path = plot_students(results, tmp_path / "val_top1.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    assert not list(tmp_path.glob("*.tmp"))


def test_beta_sweep_plot_is_a_valid_png_and_needs_pfeed_rows(tmp_path):
    results = make_results({BASELINE: [90.0, 91.0], KD: [91.0, 90.0], FT: [90.5, 91.5],
                            (PFEED, 15.0): [91.0, 91.5], (PFEED, 150.0): [93.0, 92.0], (PFEED, 1500.0): [88.0, 87.0]})
    path = plot_beta_sweep(results, tmp_path / "beta_sweep.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300
        image.verify()
    with pytest.raises(ValueError, match="no pFEED"):
        plot_beta_sweep(make_results({BASELINE: [90.0], KD: [91.0]}), tmp_path / "none.png")


def test_markdown_report_has_verdict_tables_plots_config_and_versions():
    info = environment_summary("cpu")
    assert set(info) >= {"python", "torch", "torchvision", "triton", "device"}
    one = markdown_report(two_rows([95.0], [93.5]), config={"epochs": 3}, version_info=info, total_seconds=12.5,
                          plot_name="val_top1.png")
    assert f"| {pfeed_label(500)} | resnet8 | 93.50 |" in one
    assert "did not beat" in one and "![val top-1 per epoch](val_top1.png)" in one
    assert '"epochs": 3' in one and f"- torch: {info['torch']}" in one and "12.5 s" in one
    assert "### Per seed" not in one and "beta_sweep" not in one
    results = make_results({BASELINE: [90.0, 91.0], KD: [91.0, 90.0], FT: [90.5, 91.5], (PFEED, 50.0): [93.0, 92.0],
                            (PFEED, 500.0): [92.0, 92.5]})
    text = markdown_report(results, config={}, version_info=info, total_seconds=60.0, plot_name="val_top1.png",
                           sweep_plot_name="beta_sweep.png")
    for part in ("### Against the baseline", "### Per seed", "![val top-1 against beta](beta_sweep.png)",
                 "Hinton KD", "FEED from the first teacher alone", "once per beta in 50, 500", verdict(results),
                 "Total wall time: 60.0 s (teacher 1: 30 s;", f"; {LABELS[BASELINE]}: 10, 11 s per seed;"):
        assert part in text, part

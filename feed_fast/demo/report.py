"""The demo's tables (printed and in markdown) and the markdown report with the verdict, the plots, the command,
the config and the versions it ran with (`feed_fast.environment`)."""
from __future__ import annotations

import json
from collections.abc import Sequence

from .results import ENSEMBLE, FT, KD, PFEED, TEACHER, RunResult, by_role, student_rows, top1_by_seed
from .seed_stats import CONFIDENCE, Spread
from .verdict import comparisons, verdict

HEADERS = ("model", "architecture", "val top-1 (%)", "train images/s", "parameters")
COMPARISON_HEADERS = ("student", "val top-1 (%)", "paired diff. vs baseline", f"{CONFIDENCE:.0%} interval",
                      "seeds won", "verdict")
OUTCOME_WORDS = {"above": "beat the baseline", "within": "within the spread", "below": "below the baseline",
                 "one seed": "one seed: no spread"}


def _count(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def table_rows(results: Sequence[RunResult]) -> list[tuple[str, ...]]:
    """One row per teacher and for the ensemble; each student row aggregated over its seeds."""
    rows = []
    for r in by_role(results, TEACHER) + by_role(results, ENSEMBLE):
        rows.append((r.label, r.model, f"{r.val_top1:.2f}", _count(r.images_per_sec), _count(r.params)))
    for runs in student_rows(results):
        top1 = Spread.of([r.val_top1 for r in runs])
        speeds = [r.images_per_sec for r in runs if r.images_per_sec is not None]
        speed = Spread.of(speeds).mean if speeds else None
        seeds = f" [{len(runs)} seeds]" if len(runs) > 1 else ""
        rows.append((runs[0].label + seeds, runs[0].model, top1.format(), _count(speed), _count(runs[0].params)))
    return rows


def format_table(results: Sequence[RunResult]) -> str:
    """A fixed-width table for the terminal."""
    rows = [HEADERS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_rows(results: Sequence[RunResult]) -> list[tuple[str, ...]]:
    """Each student row against the baseline, paired by seed (verdict.py decides the last column)."""
    rows = []
    for c in comparisons(results):
        p, interval = c.paired, c.paired.interval()
        rows.append((c.label, c.top1.format(), f"{p.mean:+.2f} ± {p.std:.2f}" if p.n > 1 else f"{p.mean:+.2f}",
                     f"[{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "-", f"{p.wins} of {p.n}",
                     OUTCOME_WORDS[c.outcome]))
    return rows


def per_seed_rows(results: Sequence[RunResult]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(headers, rows): one row per seed, the baseline's top-1 and each other row's top-1 with its difference."""
    rows = student_rows(results)
    by_seed = [top1_by_seed(runs) for runs in rows]
    headers = ("seed", *(runs[0].label for runs in rows))
    table = []
    for seed in sorted(set.intersection(*(set(s) for s in by_seed))) if rows else []:
        base = by_seed[0][seed]
        cells = [f"{base:.2f}"] + [f"{s[seed]:.2f} ({s[seed] - base:+.2f})" for s in by_seed[1:]]
        table.append((str(seed), *cells))
    return headers, table


def _run_times(results: Sequence[RunResult]) -> str:
    """' (teacher 1: 65 s, ..., pFEED student (...): 68, 70 s per seed, ...)': each run's training time."""
    parts = [f"{r.label}: {r.seconds:.0f} s" for r in by_role(results, TEACHER) if r.seconds is not None]
    for runs in student_rows(results):
        seconds = [f"{r.seconds:.0f}" for r in runs if r.seconds is not None]
        if seconds:
            parts.append(f"{runs[0].label}: {', '.join(seconds)} s" + (" per seed" if len(seconds) > 1 else ""))
    return " (" + "; ".join(parts) + ")" if parts else ""


def _what_ran(results: Sequence[RunResult]) -> str:
    teachers = len(by_role(results, TEACHER))
    roles = {runs[0].role for runs in student_rows(results)}
    betas = sorted({r.beta for r in by_role(results, PFEED)})
    others = []
    if KD in roles:
        others.append("Hinton KD from the mean of the teachers' softened logits (KD)")
    if FT in roles:
        others.append("FEED from the first teacher alone (FT, K=1)")
    if PFEED in roles:
        others.append(f"FEED from all {teachers} teachers (pFEED)"
                      + (f", once per beta in {', '.join(f'{b:g}' for b in betas)}" if len(betas) > 1 else ""))
    rows = "; ".join(["cross-entropy alone (baseline)", *others])
    return (f"{teachers} teachers of one architecture (different seeds) are trained with cross-entropy. Then a "
            "smaller student is trained with the same epochs, batch, learning rate and seeds, once per row: "
            f"{rows}. Every loss adds to the cross-entropy. Val top-1 is measured on a fixed, stratified held-out "
            "split of the 1,797 scans; each row is paired with the baseline trained with the same seed (same "
            "initialisation and data order).")


def markdown_report(
    results: Sequence[RunResult],
    *,
    config: dict,
    version_info: dict,
    total_seconds: float,
    plot_name: str | None,
    command: str | None = None,
    sweep_plot_name: str | None = None,
) -> str:
    lines = [
        "# feed-fast demo: FEED on scikit-learn's digits",
        "",
        _what_ran(results),
        "",
        "## Result",
        "",
        verdict(results),
        "",
        markdown_table(table_rows(results), HEADERS),
        "",
        ("Training images/s include everything a step does (for KD, FT and pFEED: the teachers' forward passes, "
         "and the translators for FT and pFEED). The parameters of every student are those of the deployed model: "
         "the translators are dropped after training. The ensemble averages the teachers' softmax outputs."),
        "",
    ]
    compared = comparison_rows(results)
    if compared:
        lines += ["### Against the baseline", "", markdown_table(compared, COMPARISON_HEADERS), "",
                  (f"Paired difference: student - baseline with the same seed, mean ± sample std over seeds; the "
                   f"{CONFIDENCE:.0%} t interval is that of the mean difference. A row beat the baseline only when "
                   "the whole interval lies above zero."), ""]
    headers, seed_rows = per_seed_rows(results)
    if len(seed_rows) > 1:
        lines += ["### Per seed", "", "val top-1 (%), and the difference to the baseline of the same seed.", "",
                  markdown_table(seed_rows, headers), ""]
    if sweep_plot_name:
        lines += [f"![val top-1 against beta]({sweep_plot_name})", ""]
    if plot_name:
        lines += [f"![val top-1 per epoch]({plot_name})", ""]
    lines += [f"Total wall time: {total_seconds:.1f} s{_run_times(results)}.", ""]
    if command:
        lines += ["## Command", "", "```", command, "```", ""]
    lines += ["## Config", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    lines += ["## Versions", ""] + [f"- {name}: {'not installed' if value is None else value}"
                                    for name, value in version_info.items()] + [""]
    lines += ["## Runs", ""]
    lines += [f"- {r.label} (seed {r.seed}): `{r.run_dir}`" for r in results if r.run_dir]
    return "\n".join(lines) + "\n"

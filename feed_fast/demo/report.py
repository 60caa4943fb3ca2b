"""The demo's outputs: the results table (printed and in markdown), the per-epoch plot of the two students and
the markdown report with the config and the versions it ran with (`feed_fast.environment`)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..atomic_files import atomic_write
from .results import BASELINE, ENSEMBLE, PFEED, TEACHER, RunResult, Spread, by_role, verdict

HEADERS = ("model", "architecture", "val top-1 (%)", "train images/s", "parameters")


def _count(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def table_rows(results: Sequence[RunResult]) -> list[tuple[str, ...]]:
    """One row per teacher and for the ensemble; the two students as one row each, aggregated over seeds."""
    rows = []
    for r in by_role(results, TEACHER) + by_role(results, ENSEMBLE):
        rows.append((r.label, r.model, f"{r.val_top1:.2f}", _count(r.images_per_sec), _count(r.params)))
    for role, label in ((BASELINE, "baseline student (CE only)"), (PFEED, "pFEED student")):
        runs = by_role(results, role)
        if not runs:
            continue
        top1 = Spread.of([r.val_top1 for r in runs])
        speeds = [r.images_per_sec for r in runs if r.images_per_sec is not None]
        speed = Spread.of(speeds).mean if speeds else None
        seeds = f" [{len(runs)} seeds]" if len(runs) > 1 else ""
        rows.append((label + seeds, runs[0].model, top1.format(), _count(speed), _count(runs[0].params)))
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


def per_seed_rows(results: Sequence[RunResult]) -> list[tuple[str, ...]]:
    baseline = {r.seed: r for r in by_role(results, BASELINE)}
    pfeed = {r.seed: r for r in by_role(results, PFEED)}
    rows = []
    for seed in sorted(set(baseline) & set(pfeed)):
        b, p = baseline[seed].val_top1, pfeed[seed].val_top1
        rows.append((str(seed), f"{b:.2f}", f"{p:.2f}", f"{p - b:+.2f}"))
    return rows


def plot_students(results: Sequence[RunResult], path: Path) -> Path:
    """Val top-1 per epoch of the two students (one thin line per seed, the mean over seeds in bold) as a PNG.

    Uses the Agg canvas directly, so no display is needed and pyplot's global state is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for role, label, color in ((BASELINE, "baseline student (CE only)", "tab:blue"), (PFEED, "pFEED student", "tab:red")):
        curves = [r.top1_per_epoch for r in by_role(results, role) if r.top1_per_epoch]
        if not curves:
            continue
        epochs = min(len(c) for c in curves)
        xs = list(range(1, epochs + 1))
        if len(curves) > 1:
            for curve in curves:
                axes.plot(xs, curve[:epochs], color=color, alpha=0.3, linewidth=1)
            label += f" (mean of {len(curves)} seeds)"
        mean = [sum(c[e] for c in curves) / len(curves) for e in range(epochs)]
        axes.plot(xs, mean, color=color, linewidth=2, marker="o", markersize=3, label=label)
    for r in by_role(results, ENSEMBLE):
        axes.axhline(r.val_top1, color="gray", linestyle="--", linewidth=1, label=f"teachers' ensemble ({r.val_top1:.1f}%)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("val top-1 (%)")
    axes.set_title("digits (scikit-learn), 32x32 RGB: students' val accuracy")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return atomic_write(lambda file: figure.savefig(file, format="png"), path)


def markdown_report(
    results: Sequence[RunResult],
    *,
    config: dict,
    version_info: dict,
    total_seconds: float,
    plot_name: str | None,
    command: str | None = None,
) -> str:
    lines = [
        "# feed-fast demo: pFEED on scikit-learn's digits",
        "",
        ("3 teachers of one architecture (different seeds) are trained with cross-entropy, then a smaller student "
        "is trained twice with the same epochs and seed: with cross-entropy alone (baseline) and with pFEED "
        "(cross-entropy + the FEED feature loss against all teachers). Val top-1 is measured on a fixed, "
        "stratified held-out split of the 1,797 scans."),
        "",
        "## Result",
        "",
        verdict(results),
        "",
        markdown_table(table_rows(results), HEADERS),
        "",
        ("Training images/s include everything a step does (for pFEED: the teachers' forward passes and the "
        "translators). The parameters of the pFEED student are those of the deployed model: the translators "
        "are dropped after training. The ensemble averages the teachers' softmax outputs."),
        "",
    ]
    seed_rows = per_seed_rows(results)
    if len(seed_rows) > 1:
        lines += [
            "### Per seed",
            "",
            markdown_table(seed_rows, ("seed", "baseline top-1 (%)", "pFEED top-1 (%)", "pFEED - baseline")),
            "",
        ]
    if plot_name:
        lines += [f"![val top-1 per epoch]({plot_name})", ""]
    timed = [r for r in results if r.seconds is not None]
    lines += [f"Total wall time: {total_seconds:.1f} s"
              + (" (" + ", ".join(f"{r.label} seed {r.seed}: {r.seconds:.0f} s" for r in timed) + ")." if timed else "."),
              ""]
    if command:
        lines += ["## Command", "", "```", command, "```", ""]
    lines += ["## Config", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    lines += ["## Versions", ""] + [f"- {name}: {'not installed' if value is None else value}"
                                    for name, value in version_info.items()] + [""]
    lines += ["## Runs", ""]
    lines += [f"- {r.label} (seed {r.seed}): `{r.run_dir}`" for r in results if r.run_dir]
    return "\n".join(lines) + "\n"

"""The demo's two PNGs: val top-1 per epoch of every student row, and val top-1 against beta for the pFEED rows
beside the baseline. Both use the Agg canvas directly, so no display is needed and pyplot's global state is
left alone."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from ..atomic_files import atomic_write
from .results import BASELINE, ENSEMBLE, FT, KD, PFEED, RunResult, by_role, student_rows
from .seed_stats import Spread
from .settings import format_beta

TITLE = "digits (scikit-learn), 32x32 RGB"
ROLE_COLORS = {BASELINE: "tab:blue", KD: "tab:green", FT: "tab:purple"}


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    return atomic_write(lambda file: figure.savefig(file, format="png"), path)


def _row_colors(rows: Sequence[Sequence[RunResult]]) -> list:
    """Fixed colours for baseline, KD and FT; the pFEED rows shade from orange to dark red as beta grows."""
    from matplotlib import colormaps

    pfeed = [runs for runs in rows if runs[0].role == PFEED]
    shades = colormaps["OrRd"]
    colors = []
    for runs in rows:
        if runs[0].role == PFEED:
            position = pfeed.index(runs) / max(len(pfeed) - 1, 1)
            colors.append("tab:red" if len(pfeed) == 1 else shades(0.45 + 0.55 * position))
        else:
            colors.append(ROLE_COLORS[runs[0].role])
    return colors


def plot_students(results: Sequence[RunResult], path: Path) -> Path:
    """Val top-1 per epoch of each student row (one thin line per seed, the mean over seeds in bold)."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = _figure()
    rows = student_rows(results)
    for runs, color in zip(rows, _row_colors(rows)):
        curves = [r.top1_per_epoch for r in runs if r.top1_per_epoch]
        if not curves:
            continue
        epochs = min(len(c) for c in curves)
        xs = list(range(1, epochs + 1))
        label = runs[0].label
        if len(curves) > 1:
            for curve in curves:
                axes.plot(xs, curve[:epochs], color=color, alpha=0.25, linewidth=1)
            label += f" (mean of {len(curves)} seeds)"
        mean = [statistics.fmean(c[e] for c in curves) for e in range(epochs)]
        axes.plot(xs, mean, color=color, linewidth=2, marker="o", markersize=3, label=label)
    for r in by_role(results, ENSEMBLE):
        axes.axhline(r.val_top1, color="gray", linestyle="--", linewidth=1, label=f"teachers' ensemble ({r.val_top1:.1f}%)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("val top-1 (%)")
    axes.set_title(f"{TITLE}: students' val accuracy")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=7)
    return _save(figure, path)


def plot_beta_sweep(results: Sequence[RunResult], path: Path) -> Path:
    """Final val top-1 of the pFEED rows against beta (log axis): each seed a dot, the mean ± sample std as a
    bar; the baseline as a line with its ± std band; KD (no beta) as a line and FT as a point at its beta."""
    rows = student_rows(results)
    pfeed = [runs for runs in rows if runs[0].role == PFEED]
    if not pfeed:
        raise ValueError("no pFEED student in the results: nothing to plot against beta")
    figure, axes = _figure()
    axes.set_xscale("log")
    betas = [runs[0].beta for runs in pfeed]
    spreads = [Spread.of([r.val_top1 for r in runs]) for runs in pfeed]
    for beta, runs in zip(betas, pfeed):
        axes.scatter([beta] * len(runs), [r.val_top1 for r in runs], color="tab:red", alpha=0.35, s=12)
    axes.errorbar(betas, [s.mean for s in spreads], yerr=[s.std for s in spreads], color="tab:red", marker="o",
                  linewidth=2, capsize=3, label="pFEED (all teachers), mean ± std over seeds")
    for runs in rows:
        role, spread = runs[0].role, Spread.of([r.val_top1 for r in runs])
        if role == BASELINE:
            axes.axhline(spread.mean, color=ROLE_COLORS[BASELINE], linewidth=1.5,
                         label=f"baseline (CE only), {spread.format()}")
            if spread.std > 0:
                axes.axhspan(spread.mean - spread.std, spread.mean + spread.std, color=ROLE_COLORS[BASELINE],
                             alpha=0.12)
        elif role == KD:
            axes.axhline(spread.mean, color=ROLE_COLORS[KD], linestyle=":", linewidth=1.5,
                         label=f"KD, {spread.format()}")
        elif role == FT:
            axes.errorbar([runs[0].beta], [spread.mean], yerr=[spread.std], color=ROLE_COLORS[FT], marker="s",
                          capsize=3, linestyle="none", label=f"FT (K=1), {spread.format()}")
    from matplotlib.ticker import NullLocator

    ticks = sorted({*betas, *(runs[0].beta for runs in rows if runs[0].role == FT)})
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xticks(ticks, [format_beta(b) for b in ticks])
    axes.set_xlabel("beta (weight of the FEED term, log scale)")
    axes.set_ylabel("final val top-1 (%)")
    seeds = max(len(runs) for runs in pfeed)
    axes.set_title(f"{TITLE}: pFEED against beta ({seeds} seed{'s' if seeds > 1 else ''} each)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="best", fontsize=7)
    return _save(figure, path)

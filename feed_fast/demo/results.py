"""What the demo measured, and the comparison it draws from it: one `RunResult` per trained model (plus the
teachers' ensemble), the students aggregated over seeds, and a verdict worded from the numbers alone."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

TEACHER, ENSEMBLE, BASELINE, PFEED = "teacher", "ensemble", "baseline", "pfeed"
ROLES = (TEACHER, ENSEMBLE, BASELINE, PFEED)


def is_finite_percentage(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 100.0


@dataclass
class RunResult:
    """One row of the demo's results. `val_top1` and `top1_per_epoch` are percentages in [0, 100]."""

    label: str
    role: str
    model: str
    seed: int | None
    val_top1: float
    params: int
    images_per_sec: float | None = None  # training throughput; None for the ensemble (nothing trained)
    top1_per_epoch: list = field(default_factory=list)
    seconds: float | None = None
    run_dir: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        for value in [self.val_top1, *self.top1_per_epoch]:
            if not is_finite_percentage(value):
                raise ValueError(f"{self.label}: accuracies must be percentages in [0, 100], got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation over seeds (std is 0.0 for a single seed)."""

    values: tuple
    mean: float
    std: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError("a spread needs at least one value")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(values, statistics.fmean(values), std)

    def format(self, digits: int = 2) -> str:
        if len(self.values) == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def by_role(results: Sequence[RunResult], role: str) -> list[RunResult]:
    return [r for r in results if r.role == role]


def student_spreads(results: Sequence[RunResult]) -> tuple[Spread, Spread]:
    """(baseline, pfeed) val top-1 over the seeds both students ran with, paired by seed."""
    baseline = {r.seed: r.val_top1 for r in by_role(results, BASELINE)}
    pfeed = {r.seed: r.val_top1 for r in by_role(results, PFEED)}
    seeds = sorted(set(baseline) & set(pfeed))
    if not seeds:
        raise ValueError("the results hold no seed with both a baseline and a pFEED student")
    return Spread.of([baseline[s] for s in seeds]), Spread.of([pfeed[s] for s in seeds])


def verdict(results: Sequence[RunResult]) -> str:
    """Plain sentences on whether pFEED beat the CE-only baseline here. Only the numbers decide the wording."""
    baseline, pfeed = student_spreads(results)
    gaps = [p - b for b, p in zip(baseline.values, pfeed.values)]
    mean_gap = statistics.fmean(gaps)
    n = len(gaps)
    wins = sum(g > 0 for g in gaps)
    if n == 1:
        gap = gaps[0]
        if gap > 0:
            text = (
                f"pFEED beat the CE-only baseline on this run by {gap:.2f} points of val top-1 "
                f"({pfeed.mean:.2f}% vs {baseline.mean:.2f}%). This is one seed: a gap of this size can come "
                "from seed-to-seed noise alone; `--seeds 3` shows the spread."
            )
        elif gap == 0:
            text = (
                f"pFEED did not beat the CE-only baseline on this run: both reached {pfeed.mean:.2f}% val top-1."
            )
        else:
            text = (
                f"pFEED did not beat the CE-only baseline on this run: it reached {pfeed.mean:.2f}% val top-1, "
                f"{-gap:.2f} points below the baseline's {baseline.mean:.2f}%."
            )
        return text

    spread = max(baseline.std, pfeed.std)
    head = (
        f"Over {n} seeds, pFEED reached {pfeed.format()}% val top-1 and the CE-only baseline {baseline.format()}% "
        f"(mean ± sample standard deviation); pFEED scored higher on {wins} of {n} seeds, "
        f"mean gap {mean_gap:+.2f} points."
    )
    if mean_gap <= 0:
        tail = "pFEED did not beat the baseline on this run."
    elif wins == n and mean_gap > spread:
        tail = "pFEED beat the baseline on every seed, by more than the seed-to-seed spread."
    else:
        reasons = []
        if wins < n:
            reasons.append("it was not higher on every seed")
        if mean_gap <= spread:
            reasons.append(f"the mean gap is within the seed-to-seed spread (standard deviation up to {spread:.2f})")
        tail = f"Because {' and '.join(reasons)}, this run does not show that pFEED beat the baseline."
    return f"{head} {tail}"

"""Each student row against the CE-only baseline, paired by seed, and the plain sentences the demo prints.

The rule, in one place: with two or more seeds a method beat the baseline when the 95% t interval of its mean
paired difference lies above zero, and scored below it when the interval lies below zero; anything else is
within the seed-to-seed spread. One seed gives no spread, so a single run is reported as a gap, never as a win."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .results import BASELINE, PFEED, RunResult, student_rows, top1_by_seed
from .seed_stats import CONFIDENCE, PairedDifference, Spread, t_quantile

ABOVE, WITHIN, BELOW, ONE_SEED = "above", "within", "below", "one seed"


@dataclass(frozen=True)
class Comparison:
    """One student row against the baseline."""

    label: str
    role: str
    beta: float | None
    top1: Spread  # over the paired seeds
    baseline: Spread  # the baseline over the same seeds
    paired: PairedDifference

    @property
    def outcome(self) -> str:
        interval = self.paired.interval()
        if interval is None:
            return ONE_SEED
        low, high = interval
        return ABOVE if low > 0 else BELOW if high < 0 else WITHIN

    def to_dict(self) -> dict:
        interval = self.paired.interval()
        return {"label": self.label, "role": self.role, "beta": self.beta, "seeds": list(self.paired.seeds),
                "top1_mean": self.top1.mean, "top1_std": self.top1.std, "baseline_mean": self.baseline.mean,
                "baseline_std": self.baseline.std, "differences": list(self.paired.differences),
                "difference_mean": self.paired.mean, "difference_std": self.paired.std,
                "interval": list(interval) if interval else None, "confidence": CONFIDENCE,
                "wins": self.paired.wins, "losses": self.paired.losses, "ties": self.paired.ties,
                "outcome": self.outcome}


def comparisons(results: Sequence[RunResult]) -> list[Comparison]:
    """Every student row but the baseline, paired with the baseline seed by seed."""
    rows = student_rows(results)
    if not rows or rows[0][0].role != BASELINE:
        raise ValueError("the results hold no baseline student to compare with")
    baseline = top1_by_seed(rows[0])
    compared = []
    for runs in rows[1:]:
        method = top1_by_seed(runs)
        paired = PairedDifference.of(baseline, method)
        compared.append(Comparison(runs[0].label, runs[0].role, runs[0].beta,
                                   Spread.of([method[s] for s in paired.seeds]),
                                   Spread.of([baseline[s] for s in paired.seeds]), paired))
    return compared


def _one_seed_line(c: Comparison) -> str:
    gap, top1, base = c.paired.mean, c.top1.mean, c.baseline.mean
    if gap > 0:
        return f"- {c.label}: {top1:.2f}% vs {base:.2f}%, {gap:.2f} points above the baseline on this run."
    if gap == 0:
        return f"- {c.label}: {top1:.2f}%, the same as the baseline; it did not beat the baseline on this run."
    return (f"- {c.label}: {top1:.2f}% vs {base:.2f}%, {-gap:.2f} points below the baseline; it did not beat the "
            "baseline on this run.")


def _seeds_line(c: Comparison) -> str:
    p = c.paired
    low, high = p.interval()
    text = (f"- {c.label}: {c.top1.format()}% vs the baseline's {c.baseline.format()}%; paired difference "
            f"{p.mean:+.2f} ± {p.std:.2f} points, {CONFIDENCE:.0%} interval [{low:+.2f}, {high:+.2f}]; "
            f"higher on {p.wins} of {p.n} seeds. ")
    if c.outcome == ABOVE:
        return text + "It beat the baseline: the interval lies above zero."
    if c.outcome == BELOW:
        return text + "It scored below the baseline: the interval lies below zero."
    if p.mean <= 0:
        return text + "It did not beat the baseline."
    return text + "Within the seed-to-seed spread: this run does not show that it beat the baseline."


def _names(compared: Sequence[Comparison]) -> str:
    return ", ".join(c.label for c in compared) if compared else "none"


def verdict(results: Sequence[RunResult]) -> str:
    """Plain sentences on what beat the CE-only baseline here and what is within the spread; only the numbers
    decide the wording."""
    compared = comparisons(results)
    if not compared:
        return "Only the baseline student was trained: there is nothing to compare it with."
    n = min(c.paired.n for c in compared)
    if n == 1:
        lines = [("One seed per student, so there is no spread to judge a gap against: a gap of a point or two can "
                  "come from seed-to-seed noise alone (`--seeds 3` gives mean, spread and paired differences).")]
        lines += [_one_seed_line(c) for c in compared]
    else:
        by_outcome = {o: [c for c in compared if c.outcome == o] for o in (ABOVE, WITHIN, BELOW)}
        lines = [(f"Over {n} seeds (mean ± sample standard deviation of val top-1; paired difference = student - "
                  f"baseline trained with the same seed, with the {CONFIDENCE:.0%} t interval of its mean). "
                  f"Beat the baseline: {_names(by_outcome[ABOVE])}. Within the seed-to-seed spread: "
                  f"{_names(by_outcome[WITHIN])}. Below the baseline: {_names(by_outcome[BELOW])}.")]
        lines += [_seeds_line(c) for c in compared]
        if n == 2:
            lines.append(f"With 2 seeds the interval is wide (its t factor is {t_quantile(0.5 + CONFIDENCE / 2, 1):.1f}):"
                         " 3 or more seeds are needed to tell a difference of a few points from the spread.")
    swept = [c for c in compared if c.role == PFEED]
    if len(swept) > 1:
        lines.append(f"{len(swept)} values of beta were tried for pFEED: the best of them, picked after the fact, "
                     "looks better than it is; confirm a chosen beta on fresh seeds (`--seed`).")
    return "\n".join(lines)

"""Statistics over seeds: mean and sample spread of one row, and the paired difference of a method against the
baseline trained with the same seed (same initialisation and data order), with a t interval of its mean."""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95  # of the interval the verdict reads


def t_quantile(probability: float, df: int) -> float:
    """Student's t quantile (scipy is installed with scikit-learn, which the demo needs for its data)."""
    from scipy.stats import t

    return float(t.ppf(probability, df))


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


@dataclass(frozen=True)
class PairedDifference:
    """method - baseline, seed by seed, over the seeds both ran with. Pairing by seed removes the part of the
    seed-to-seed noise the two runs share, so the differences can be tighter than either row's own spread."""

    seeds: tuple
    differences: tuple
    mean: float
    std: float  # sample std of the differences; 0.0 for one seed
    wins: int  # seeds where the method scored higher than the baseline
    losses: int
    ties: int

    @classmethod
    def of(cls, baseline: Mapping[int, float], method: Mapping[int, float]) -> PairedDifference:
        """`baseline` and `method` map seed -> val top-1; only seeds present in both are paired."""
        seeds = tuple(sorted(set(baseline) & set(method)))
        if not seeds:
            raise ValueError("no seed has both a baseline run and a run of the method: nothing to pair")
        differences = tuple(float(method[s]) - float(baseline[s]) for s in seeds)
        spread = Spread.of(differences)
        return cls(seeds, differences, spread.mean, spread.std, wins=sum(d > 0 for d in differences),
                   losses=sum(d < 0 for d in differences), ties=sum(d == 0 for d in differences))

    @property
    def n(self) -> int:
        return len(self.differences)

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
        """Two-sided t interval of the mean difference; None for one seed (no spread to estimate)."""
        if self.n < 2:
            return None
        half = t_quantile(0.5 + confidence / 2, self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

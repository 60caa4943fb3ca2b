"""The statistics the demo's verdict rests on, on given numbers: mean and sample spread, the paired difference
against the baseline of the same seed, its t interval and the wins per seed."""
from __future__ import annotations

import math
import statistics

import pytest

from feed_fast.demo.seed_stats import PairedDifference, Spread, t_quantile


def test_spread_is_mean_and_sample_std():
    spread = Spread.of([1.0, 2.0, 3.0])
    assert spread.mean == pytest.approx(2.0) and spread.std == pytest.approx(1.0)  # n - 1 in the denominator
    assert Spread.of([5.0]).format() == "5.00" and Spread.of([5.0]).std == 0.0
    assert Spread.of([90.0, 91.0]).format() == "90.50 ± 0.71"
    with pytest.raises(ValueError, match="at least one"):
        Spread.of([])


def test_paired_difference_is_taken_seed_by_seed():
    baseline = {0: 90.0, 1: 85.0, 2: 88.0}
    method = {2: 89.5, 0: 91.0, 1: 84.5}  # order of the mapping does not matter: the seed pairs them
    paired = PairedDifference.of(baseline, method)
    assert paired.seeds == (0, 1, 2)
    assert paired.differences == pytest.approx((1.0, -0.5, 1.5))
    assert paired.mean == pytest.approx(2.0 / 3.0)
    assert paired.std == pytest.approx(statistics.stdev([1.0, -0.5, 1.5]))
    assert (paired.wins, paired.losses, paired.ties, paired.n) == (2, 1, 0, 3)


def test_pairing_removes_shared_seed_noise():
    """Rows that swing together from seed to seed: each row's own spread is large, the paired difference is
    constant, so its interval is tight and above zero while the unpaired spreads overlap."""
    baseline = {0: 80.0, 1: 90.0, 2: 85.0}
    method = {s: v + 1.0 for s, v in baseline.items()}
    paired = PairedDifference.of(baseline, method)
    assert paired.std == pytest.approx(0.0, abs=1e-12) and paired.wins == 3
    low, high = paired.interval()
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    assert Spread.of(baseline.values()).std == pytest.approx(5.0)


def test_interval_is_the_t_interval_of_the_mean_difference():
    paired = PairedDifference.of({0: 90.0, 1: 90.0, 2: 90.0}, {0: 91.0, 1: 92.0, 2: 93.0})
    # differences 1, 2, 3: mean 2, sample std 1, t(0.975, df 2) = 4.302652729911275
    low, high = paired.interval()
    half = 4.302652729911275 * 1.0 / math.sqrt(3)
    assert low == pytest.approx(2.0 - half) and high == pytest.approx(2.0 + half)
    assert t_quantile(0.975, 1) == pytest.approx(12.706204736174696)
    narrow = PairedDifference.of({0: 90.0, 1: 90.0, 2: 90.0}, {0: 91.0, 1: 92.0, 2: 93.0}).interval(0.5)
    assert narrow[0] > low and narrow[1] < high


def test_one_seed_has_no_interval_and_ties_are_counted():
    paired = PairedDifference.of({3: 88.0}, {3: 88.0})
    assert paired.interval() is None and paired.std == 0.0
    assert (paired.wins, paired.losses, paired.ties) == (0, 0, 1)


def test_only_common_seeds_are_paired():
    paired = PairedDifference.of({0: 90.0, 1: 91.0, 2: 92.0}, {1: 93.0, 2: 92.0, 5: 99.0})
    assert paired.seeds == (1, 2) and paired.differences == pytest.approx((2.0, 0.0))
    with pytest.raises(ValueError, match="nothing to pair"):
        PairedDifference.of({0: 90.0}, {1: 91.0})

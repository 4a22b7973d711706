"""The bootstrap helpers: paired and independent resampling, and the exact interval of a proportion."""

from __future__ import annotations

import numpy as np
import pytest

from service.offline import intervals


def test_bootstrap_is_the_seeded_percentile_bootstrap() -> None:
    values = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    rng = np.random.default_rng(0)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(200)]
    expected = np.percentile(means, [2.5, 97.5])
    got = intervals.bootstrap(lambda idx: float(values[idx].mean()), len(values), samples=200)
    assert got == pytest.approx(tuple(expected), abs=1e-12)


def test_paired_samples_share_indices_and_unpaired_ones_do_not() -> None:
    a = np.arange(1.0, 21.0)
    b = 2 * a
    paired = intervals.bootstrap(lambda idx: float(b[idx].mean() / a[idx].mean()), len(a))
    assert paired == pytest.approx((2.0, 2.0))
    unpaired = intervals.bootstrap_independent(lambda i, j: float(b[j].mean() / a[i].mean()), [len(a), len(b)])
    assert unpaired[0] < 2.0 < unpaired[1]


def test_independent_bootstrap_needs_two_items_per_sample() -> None:
    assert all(np.isnan(intervals.bootstrap_independent(lambda i, j: 1.0, [5, 1])))


@pytest.mark.parametrize("trials", [16, 256])
def test_proportion_interval_is_clopper_pearson_at_the_extremes(trials: int) -> None:
    # For all successes the exact lower bound solves p**n = 0.025; for none, (1 - p)**n = 0.025.
    assert intervals.proportion_interval(trials, trials) == pytest.approx((0.025 ** (1 / trials), 1.0))
    assert intervals.proportion_interval(0, trials) == pytest.approx((0.0, 1 - 0.025 ** (1 / trials)))


def test_fmt_digits() -> None:
    assert intervals.fmt(1234.5678, [1000.0, 1500.0], 0) == "1235 [1000, 1500]"
    assert intervals.fmt(0.5, [float("nan"), float("nan")]) == "0.500"


def test_rate_interval_is_exact_only_when_every_outcome_is_the_same() -> None:
    assert intervals.rate_interval([True] * 20) == intervals.proportion_interval(20, 20)
    assert intervals.rate_interval([0.0] * 20) == intervals.proportion_interval(0, 20)
    mixed = [True, False, True, True, False, True]
    assert intervals.rate_interval(mixed) == intervals.mean_interval([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])

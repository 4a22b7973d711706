"""Bootstrap 95% intervals: every figure ``eval`` and the benchmarks report comes with one.

The items are resampled with replacement (a seeded generator, so a report is
reproducible), the statistic is recomputed on each resample, and the interval is the
2.5th and 97.5th percentile of those values (the percentile bootstrap). Resamples on
which the statistic is undefined (a constant prediction has no correlation) are left out.
Samples measured on different items are resampled each on its own
(``bootstrap_independent``); a rate of all or no successes gets the exact binomial
interval instead (``proportion_interval``), since every resample of n out of n is n out of n.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

SAMPLES = 1000


def bootstrap(
    statistic: Callable[[np.ndarray], float], count: int, samples: int = SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """The 95% percentile interval of ``statistic(indices)`` over resampled item indices.
    Two figures measured on the same items (paired) take the same indices."""
    return bootstrap_independent(statistic, [count], samples, seed)


def bootstrap_many(
    statistics: Callable[[np.ndarray], dict[str, float]], count: int, samples: int = SAMPLES, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """``bootstrap`` of several statistics computed together on the same resamples."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(samples if count >= 2 else 0):
        for name, value in statistics(rng.integers(0, count, count)).items():
            if math.isfinite(value):
                draws.setdefault(name, []).append(value)
    out = {}
    for name in statistics(np.arange(count)):
        values = draws.get(name, [])
        if len(values) < samples / 2:
            out[name] = (math.nan, math.nan)
        else:
            low, high = np.percentile(values, [2.5, 97.5])
            out[name] = (float(low), float(high))
    return out


def with_intervals(
    statistics: Callable[[np.ndarray], dict[str, float]], count: int, samples: int = SAMPLES, seed: int = 0
) -> dict[str, float | list[float]]:
    """Every figure of ``statistics`` on all ``count`` items, each followed by its interval
    (``bootstrap_many``) as ``<figure>_ci: [low, high]``."""
    bounds = bootstrap_many(statistics, count, samples, seed)
    out: dict[str, float | list[float]] = {}
    for name, value in statistics(np.arange(count)).items():
        out[name], out[name + "_ci"] = value, list(bounds[name])
    return out


def bootstrap_independent(
    statistic: Callable[..., float], counts: Sequence[int], samples: int = SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """``bootstrap`` of a statistic of several samples that are not paired (measured on
    different items): each sample is resampled on its own, and ``statistic`` gets one index
    array per sample, in the order of ``counts``."""
    if min(counts, default=0) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        value = statistic(*(rng.integers(0, count, count) for count in counts))
        if math.isfinite(value):
            values.append(value)
    if len(values) < samples / 2:
        return (math.nan, math.nan)
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


def proportion_interval(successes: int, trials: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 95% interval of a proportion: unlike a bootstrap it is
    not [1, 1] when every trial succeeded (or [0, 0] when none did)."""
    from scipy import stats

    if trials < 1:
        return (math.nan, math.nan)
    bounds = stats.binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="exact")
    return (float(bounds.low), float(bounds.high))


def rate_interval(outcomes: Sequence[bool | float], samples: int = SAMPLES, seed: int = 0) -> tuple[float, float]:
    """The 95% interval of a rate of 0/1 outcomes: the bootstrap's, or the exact one
    (``proportion_interval``) when every outcome is the same."""
    hits = [bool(outcome) for outcome in outcomes]
    if len(set(hits)) == 1:
        return proportion_interval(sum(hits), len(hits))
    return mean_interval([float(hit) for hit in hits], samples, seed)


def mean_interval(values: Sequence[float], samples: int = SAMPLES, seed: int = 0) -> tuple[float, float]:
    """The 95% interval of a mean (a rate, when the values are 0 and 1)."""
    array = np.asarray(values, dtype=float)
    return bootstrap(lambda idx: float(array[idx].mean()), len(array), samples, seed)


def fmt(value: float, interval: Sequence[float] | None, digits: int = 3) -> str:
    """``0.185 [0.012, 0.351]``."""
    if interval is None or not all(math.isfinite(v) for v in interval):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"

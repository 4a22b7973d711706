"""The label-distribution maths, checked against hand-computed values."""

from __future__ import annotations

import math
import random
import sys

import pytest

from service.methods import scoring


def test_distribution_from_logprobs() -> None:
    probs = [0.05, 0.05, 0.1, 0.2, 0.1]  # label mass 0.5 before renormalising
    dist = scoring.from_logprobs("12345", [math.log(p) for p in probs], (1, 2, 3, 4, 5))
    assert dist.label_mass == pytest.approx(0.5)
    assert dist.probs == pytest.approx((0.1, 0.1, 0.2, 0.4, 0.2))
    assert dist.expected_score == pytest.approx(0.1 + 0.2 + 0.6 + 1.6 + 1.0)
    mean = 3.5
    var = 0.1 * 2.5**2 + 0.1 * 1.5**2 + 0.2 * 0.5**2 + 0.4 * 0.5**2 + 0.2 * 1.5**2
    assert dist.std == pytest.approx(math.sqrt(var))
    assert dist.expected_score == pytest.approx(mean)
    entropy = -sum(p * math.log(p) for p in (0.1, 0.1, 0.2, 0.4, 0.2))
    assert dist.confidence == pytest.approx(1 - entropy / math.log(5))
    assert dist.mode == "4"


def test_certain_and_uniform_confidence() -> None:
    certain = scoring.from_logprobs("123", [0.0, -math.inf, -math.inf], (1, 2, 3))
    assert certain.confidence == pytest.approx(1.0)
    assert certain.std == pytest.approx(0.0)
    uniform = scoring.from_logprobs("123", [math.log(1 / 3)] * 3, (1, 2, 3))
    assert uniform.confidence == pytest.approx(0.0, abs=1e-12)
    assert uniform.mode == "1"  # ties go to the first label


def test_label_values() -> None:
    assert scoring.label_values(["1", "2.5"], None) == (1.0, 2.5)
    assert scoring.label_values(["A", "B"], None) is None
    assert scoring.label_values(["A", "B"], {"A": 0, "B": 1}) == (0.0, 1.0)
    assert scoring.label_values(["nan", "1"], None) is None


def test_lager_unweighted_is_mean_of_layer_logits() -> None:
    layers = [[1.0, 2.0], [3.0, 0.0], [2.0, 1.0]]
    assert scoring.lager_logits(layers) == pytest.approx((2.0, 1.0))


def test_lager_weighted_uses_softmax_weights_without_final_entry() -> None:
    layers = [[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]
    # Two weights for three entries: the final normed entry is left out.
    assert scoring.lager_logits(layers, [0.0, 0.0]) == pytest.approx((0.5, 0.5))
    heavy = scoring.lager_logits(layers, [10.0, 0.0])
    assert heavy[0] > 0.99 and heavy[1] < 0.01
    with pytest.raises(ValueError):
        scoring.lager_logits(layers, [0.0])


def _plain_moments(probs: list[float], values: list[float]) -> tuple[float, float]:
    mean = sum(p * v for p, v in zip(probs, values, strict=True))
    return mean, math.sqrt(max(0.0, sum(p * (v - mean) ** 2 for p, v in zip(probs, values, strict=True))))


def test_moments_of_ordinary_values_are_the_plain_formulas_floats() -> None:
    """Scaling by a power of two is exact: ordinary values give bit-equal results."""
    rng = random.Random(7)
    for _ in range(500):
        k = rng.randint(2, 10)
        raw = [rng.random() for _ in range(k)]
        probs = [r / sum(raw) for r in raw]
        values = [
            rng.choice([rng.randint(-10, 10), rng.uniform(-1e6, 1e6), rng.uniform(-1e-3, 1e-3)]) for _ in range(k)
        ]
        mean, std = scoring.moments(probs, values)
        plain_mean, plain_std = _plain_moments(probs, values)
        if min(values) <= plain_mean <= max(values):  # else the mean is held inside the values
            assert (mean, std) == (plain_mean, plain_std)


@pytest.mark.parametrize(
    ("values", "mean", "std"),
    [
        ((1e200, -1e200), 0.0, 1e200),
        ((1e200, 0.0), 5e199, 5e199),
        ((sys.float_info.max, -sys.float_info.max), 0.0, sys.float_info.max),
        ((sys.float_info.max, sys.float_info.max), sys.float_info.max, 0.0),
        ((5e-324, 0.0), 5e-324, 0.0),  # subnormal: its half rounds away, nothing overflows
    ],
)
def test_moments_of_huge_values_are_finite_and_right(values: tuple[float, float], mean: float, std: float) -> None:
    """The plain formulas overflow here (the square of 1e200 is inf); these are the exact
    moments of a 50/50 distribution, within float rounding."""
    got_mean, got_std = scoring.moments([0.5, 0.5], values)
    assert math.isfinite(got_mean) and math.isfinite(got_std)
    assert got_mean == pytest.approx(mean, rel=1e-12, abs=5e-324)
    assert got_std == pytest.approx(std, rel=1e-12, abs=5e-324)


def test_distribution_and_mixture_of_extreme_values_stay_finite() -> None:
    values = (-sys.float_info.max, -1e300, 0.0, 1e300, sys.float_info.max)
    rng = random.Random(3)
    parts = []
    for _ in range(20):
        logprobs = [math.log(rng.random()) for _ in values]
        dist = scoring.from_logprobs("abcde", logprobs, values)
        assert math.isfinite(dist.expected_score) and math.isfinite(dist.std)
        assert -sys.float_info.max <= dist.expected_score <= sys.float_info.max
        parts.append(dist)
    mixed = scoring.mixture("abcde", parts, [1e6] * 10 + [1e-300] * 10, values)
    assert math.isfinite(mixed.expected_score) and math.isfinite(mixed.std)

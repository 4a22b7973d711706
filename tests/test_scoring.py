"""The label-distribution maths, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

from service import scoring


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

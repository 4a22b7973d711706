"""Review flags and split conformal coverage, on synthetic data with known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from service.methods import review
from service.methods.review import ReviewThresholds


def draws(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated distributions and labels drawn from them (exchangeable items)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (count, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in probs])
    return probs, labels


@pytest.mark.parametrize("target_error", [0.05, 0.1, 0.2, 0.4])
def test_split_conformal_sets_cover_new_items(target_error: float) -> None:
    probs, labels = draws(500, seed=0)
    limit = review.conformal_threshold([p[y] for p, y in zip(probs, labels, strict=True)], target_error)
    fresh, fresh_labels = draws(20000, seed=1)
    covered = np.mean([y in review.prediction_set(p, limit) for p, y in zip(fresh, fresh_labels, strict=True)])
    # At least 1 - alpha, up to the sampling error of 500 calibration items.
    assert covered >= 1 - target_error - 0.03
    assert covered <= 1 - target_error + 0.05
    # The guarantee the flags inherit: unflagged and wrong items are at most alpha.
    unflagged_wrong = np.mean(
        [review.pins_one_label(p, limit) and int(np.argmax(p)) != y for p, y in zip(fresh, fresh_labels, strict=True)]
    )
    assert unflagged_wrong <= target_error + 0.02


def test_conformal_quantile_by_hand() -> None:
    # n = 9, alpha = 0.2: rank ceil(10 * 0.8) = 8 of the sorted scores 1 - p.
    true_probs = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    scores = sorted(1 - p for p in true_probs)
    assert review.conformal_threshold(true_probs, 0.2) == pytest.approx(1 - scores[7])
    # Too few items for the rate: every label stays in.
    assert review.conformal_threshold([0.5, 0.5], 0.05) == 0.0


def test_reasons() -> None:
    thresholds = ReviewThresholds(min_confidence=0.2, min_label_mass=0.1, min_calibrated_probability=0.4)
    assert review.reasons(0.5, 0.5, [0.6, 0.2, 0.2], thresholds) == ()
    assert review.reasons(0.1, 0.05, [0.6, 0.2, 0.2], thresholds) == ("low_confidence", "low_label_mass")
    # Two labels reach the threshold, or none does: the set is not the one label.
    assert review.reasons(0.5, 0.5, [0.45, 0.45, 0.1], thresholds) == ("calibrated_uncertain",)
    assert review.reasons(0.5, 0.5, [0.35, 0.35, 0.3], thresholds) == ("calibrated_uncertain",)
    assert review.reasons(0.0, 0.0, None, ReviewThresholds()) == ()

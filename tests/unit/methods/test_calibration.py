"""Calibration on synthetic data with a known miscalibration: the fitted map must undo it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.methods import calibration
from service.methods.calibration import Calibration
from service.methods.scoring import from_probs
from service.offline.evaluation import calibration_error

VALUES = np.arange(1.0, 6.0)
LABELS = ["1", "2", "3", "4", "5"]
TEMPERATURE = 3.0
BIAS = np.array([1.5, 0.5, 0.0, -0.5, -1.5])


def synthetic(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True distributions, human labels drawn from them, and a judge that is overconfident
    (its log-probabilities are the true ones times 3) and biased towards low labels."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, (count, 5))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    human = np.array([rng.choice(VALUES, p=row) for row in truth])
    judge = calibration._softmax(np.log(truth) * TEMPERATURE + BIAS)
    return truth, human, judge


def ece(probs: np.ndarray, human: np.ndarray) -> float:
    return calibration_error([from_probs(LABELS, row, list(VALUES)) for row in probs], list(human), list(VALUES))


def test_soft_targets_keep_the_human_mean() -> None:
    targets = calibration.soft_targets([1.0, 3.67, 5.0, 2.5], VALUES)
    assert targets.sum(axis=1) == pytest.approx(np.ones(4))
    assert targets @ VALUES == pytest.approx([1.0, 3.67, 5.0, 2.5])
    assert targets[1] == pytest.approx([0, 0, 0.33, 0.67, 0])


def test_temperature_bias_recovers_a_known_miscalibration() -> None:
    truth, human, judge = synthetic(4000, seed=0)
    params = calibration.fit_temperature_bias(judge, calibration.soft_targets(human, VALUES))
    assert params["temperature"] == pytest.approx(TEMPERATURE, rel=0.1)
    # The judge was off from the true distributions by up to 0.6; the map brings it back.
    calibrated = calibration.apply_temperature_bias(params, judge)
    assert np.abs(judge - truth).max() > 0.5
    assert np.abs(calibrated - truth).max() < 0.05


def test_the_chosen_map_lowers_ece_and_cross_entropy_on_fresh_data() -> None:
    _, human, judge = synthetic(1500, seed=1)
    kind, params, losses = calibration.choose_and_fit(judge, human, VALUES, folds=5, seed=0)
    assert kind != "identity" and losses[kind] < losses["identity"]
    truth, fresh_human, fresh_judge = synthetic(1500, seed=2)
    calibrated = calibration.apply_map(kind, params, fresh_judge, VALUES)
    targets = calibration.soft_targets(fresh_human, VALUES)
    assert calibration.cross_entropy(targets, calibrated) < calibration.cross_entropy(targets, fresh_judge)
    assert ece(calibrated, fresh_human) < 0.05 < ece(fresh_judge, fresh_human)
    # Nearly as good as the true distributions themselves.
    assert calibration.cross_entropy(targets, calibrated) < calibration.cross_entropy(targets, truth) + 0.05


def test_isotonic_is_monotone_in_the_expected_score() -> None:
    _, human, judge = synthetic(600, seed=3)
    params = calibration.fit_map("isotonic", judge, human, VALUES)
    grid = np.linspace(1, 5, 200)
    expected = calibration.apply_isotonic(params, grid) @ VALUES
    assert np.all(np.diff(expected) >= -1e-9)
    assert calibration.apply_isotonic(params, grid).sum(axis=1) == pytest.approx(np.ones(200))


def test_a_calibration_applies_only_to_what_it_was_fitted_for(tmp_path: Path) -> None:
    fitted = Calibration(
        kind="temperature_bias",
        params={"temperature": 2.0, "bias": [0.0] * 5},
        model="m",
        labels=LABELS,
        values=list(VALUES),
        method="final",
        template="default",
        prompt_version="abc",
    )
    assert fitted.mismatch("m", LABELS, "final", "abc") is None
    assert "model" in (fitted.mismatch("other", LABELS, "final", "abc") or "")
    assert "labels" in (fitted.mismatch("m", ["1", "2"], "final", "abc") or "")
    assert "method" in (fitted.mismatch("m", LABELS, "lager", "abc") or "")
    assert "prompt version" in (fitted.mismatch("m", LABELS, "final", "xyz") or "")
    path = tmp_path / "c.json"
    fitted.save(path)
    assert json.loads(path.read_text())["prompt_version"] == "abc"
    again = Calibration.load(path)
    probs = [0.7, 0.1, 0.1, 0.05, 0.05]
    assert again.apply(probs) == pytest.approx(fitted.apply(probs))
    # Temperature 2 flattens: the top label keeps less than it had.
    assert again.apply(probs)[0] < 0.7

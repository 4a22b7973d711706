"""The probe's regularised logistic regression: exact in the span of the items, and able to
learn a known linear signal from many noisy features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from service.methods import probe
from service.methods.calibration import soft_targets

VALUES = np.arange(1.0, 6.0)


def test_fit_in_the_span_equals_the_full_fit() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 80))
    targets = soft_targets(rng.uniform(1, 5, 30), VALUES)
    reduced = probe.fit_path(features, targets, [1.0])[0]
    full = probe._fit_logistic(features, targets, 1.0, None)
    assert reduced[0] == pytest.approx(full[0], abs=1e-4)
    assert reduced[1] == pytest.approx(full[1], abs=1e-4)


def test_probe_learns_a_signal_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    count, dim = 300, 200
    direction = rng.normal(size=dim)
    features = rng.normal(size=(count, dim))
    human = np.clip(3 + (features @ direction) / np.linalg.norm(direction) + rng.normal(0, 0.5, count), 1, 5)
    train, test = slice(0, 200), slice(200, None)
    mean, scale, weights, bias, strength, losses = probe.fit_probe(features[train], human[train], VALUES)
    assert strength in probe.STRENGTHS and set(losses) == set(probe.STRENGTHS)
    fitted = probe.Probe(
        layers=[3],
        mean=mean.tolist(),
        scale=scale.tolist(),
        weights=weights.tolist(),
        bias=bias.tolist(),
        strength=strength,
        model="m",
        labels=["1", "2", "3", "4", "5"],
        values=list(VALUES),
        template="default",
        prompt_version="v",
    )
    path = tmp_path / "probe.json"
    fitted.save(path)
    loaded = probe.Probe.load(path)
    expected = []
    for row in features[test]:
        logits = np.asarray(loaded.logits([row]))
        p = np.exp(logits - logits.max())
        expected.append(float(p / p.sum() @ VALUES))
    assert stats.spearmanr(expected, human[test]).statistic > 0.5
    assert loaded.mismatch("m", loaded.labels, "v") is None
    assert "prompt version" in (loaded.mismatch("m", loaded.labels, "w") or "")

"""A learned readout: a linear probe on the judge's hidden states at the scoring position.

Features: the scoring-position hidden state of the chosen layers (0 = embeddings, the
last entry = the model's final normed output), concatenated and standardised with the
fit items' mean and spread. Model: multinomial logistic regression onto the labels,
trained on soft targets (each human score split between the two labels around it, as in
``calibration``), with an L2 penalty whose strength is chosen by k-fold cross-validation
on the fit items (mean held-out cross-entropy). Its output is a distribution over the
labels, and the expected score follows from the label values as for every method.

A probe records what it was fitted for (model, labels, template, prompt version) and is
served only for requests that match (``mismatch``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.methods.calibration import cross_entropy, soft_targets

# L2 strengths tried by cross-validation (per item, on standardised features).
STRENGTHS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def fit_logistic(features: np.ndarray, targets: np.ndarray, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights [K, D] and bias [K] minimising mean soft-target cross-entropy + strength/2 |W|^2."""
    ((weights, bias),) = fit_path(features, targets, [strength])
    return weights, bias


def fit_path(
    features: np.ndarray, targets: np.ndarray, strengths: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``fit_logistic`` for several strengths, strongest first, each warm-started from the last.

    With more features than items the optimum lies in the span of the items' rows (the
    penalty removes any component outside it), so the fit runs exactly in the
    coordinates of that span (``X = U S V^T``: fit on ``U S``, then ``W = B V^T``)."""
    count, dim = features.shape
    basis = None
    if dim > count:
        u, s, basis = np.linalg.svd(features, full_matrices=False)
        features = u * s
    out: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    start = None
    for strength in sorted(strengths, reverse=True):
        weights, bias, start = _fit_logistic(features, targets, strength, start)
        out[strength] = (weights @ basis if basis is not None else weights, bias)
    return [out[strength] for strength in strengths]


def _fit_logistic(
    features: np.ndarray, targets: np.ndarray, strength: float, start: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from scipy.optimize import minimize

    count, dim = features.shape
    k = targets.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = theta[: k * dim].reshape(k, dim), theta[k * dim :]
        probs = _softmax(features @ weights.T + bias)
        value = cross_entropy(targets, probs) + 0.5 * strength * float((weights**2).sum())
        residual = (probs - targets) / count
        grad_w = residual.T @ features + strength * weights
        return value, np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

    x0 = start if start is not None else np.zeros(k * dim + k)
    result = minimize(loss, x0, jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    return result.x[: k * dim].reshape(k, dim), result.x[k * dim :], result.x


def standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def cross_validate(
    features: np.ndarray, human: np.ndarray, values: np.ndarray, folds: int, seed: int
) -> dict[float, float]:
    """Mean held-out cross-entropy of every strength over ``folds`` seeded folds; each
    fold standardises with its own training items only."""
    index = list(range(len(human)))
    random.Random(seed).shuffle(index)
    parts = [index[f::folds] for f in range(folds)]
    targets = soft_targets(human, values)
    losses = dict.fromkeys(STRENGTHS, 0.0)
    for part in parts:
        held = np.asarray(part)
        train = np.asarray(sorted(set(index) - set(part)))
        mean, scale = standardise(features[train])
        x_train, x_held = (features[train] - mean) / scale, (features[held] - mean) / scale
        for strength, (weights, bias) in zip(STRENGTHS, fit_path(x_train, targets[train], STRENGTHS), strict=True):
            probs = _softmax(x_held @ weights.T + bias)
            losses[strength] += cross_entropy(targets[held], probs) * len(held) / len(human)
    return losses


@dataclass
class Probe:
    """A fitted probe and what it was fitted for."""

    layers: list[int]
    mean: list[float]
    scale: list[float]
    weights: list[list[float]]
    bias: list[float]
    strength: float
    model: str
    labels: list[str]
    values: list[float]
    template: str
    prompt_version: str
    cv_cross_entropy: dict[str, float] = field(default_factory=dict)
    fit_ids: list[str] = field(default_factory=list)

    def mismatch(self, model: str, labels: Sequence[str], prompt_version: str) -> str | None:
        """Why this probe cannot serve a request, or None when it can."""
        if model != self.model:
            return f"the probe was fitted for model {self.model!r}, not {model!r}"
        if list(labels) != self.labels:
            return f"the probe was fitted for labels {self.labels}, not {list(labels)}"
        if prompt_version != self.prompt_version:
            return (
                f"the probe was fitted for prompt version {self.prompt_version} "
                f"(template {self.template!r}), not {prompt_version}"
            )
        return None

    def logits(self, hidden: Sequence[Sequence[float]]) -> tuple[float, ...]:
        """The label logits of one item from its hidden rows (one per probe layer, in order)."""
        x = (np.concatenate([np.asarray(row, dtype=float) for row in hidden]) - self.mean) / self.scale
        return tuple(float(v) for v in np.asarray(self.weights) @ x + np.asarray(self.bias))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Probe:
        data: dict[str, Any] = json.loads(path.read_text())
        probe = cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        dim = len(probe.mean)
        if len(probe.weights) != len(probe.labels) or any(len(row) != dim for row in probe.weights):
            raise ValueError(f"{path}: the probe's weights do not match its labels and features")
        return probe


def fit_probe(
    features: np.ndarray, human: np.ndarray, values: np.ndarray, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, dict[float, float]]:
    """Choose the L2 strength by cross-validation, then fit on all items.
    Returns (mean, scale, weights, bias, strength, cross-validated losses)."""
    losses = cross_validate(features, human, values, min(folds, len(human)), seed)
    strength = min(STRENGTHS, key=lambda s: (losses[s], -s))
    mean, scale = standardise(features)
    weights, bias = fit_logistic((features - mean) / scale, soft_targets(human, values), strength)
    return mean, scale, weights, bias, strength, losses

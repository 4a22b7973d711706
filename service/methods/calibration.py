"""Calibration: a map from the judge's label distribution to the human scale.

Fitted on human-labelled items (``judge-service fit-calibration``). Human scores may lie
between labels (a mean of raters, 3.67 say); each becomes a soft target on the two labels
around it, weighted so that its mean is the human score (3.67 -> 1/3 on "3", 2/3 on "4").

Candidate maps, chosen by k-fold cross-validation on the fit data by the mean
cross-entropy of the soft targets under the calibrated distribution (a proper scoring
rule, so a map cannot win by being vaguer or sharper than the data warrant):

- ``identity``: the judge's distribution as it is;
- ``temperature_bias``: ``p' = softmax(log p / T + b)``, one temperature and one bias per
  label, fitted by the same cross-entropy (L-BFGS);
- ``isotonic``: isotonic regression of the human score on the judge's expected score; its
  blocks of fit items become bins, each bin's distribution is the mean soft target of its
  items mixed with one pseudo-item drawn from the overall distribution tilted to the same
  mean (so no label gets zero and the bin's mean stays the isotonic value), and a new
  item's distribution is interpolated linearly between the bins around its expected
  score, as the isotonic fit itself is. Its expected score is therefore monotone in the
  judge's.

A calibration records what it was fitted for (model, labels, method, template, prompt
version) and is never applied to anything else (``mismatch``).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("identity", "temperature_bias", "isotonic")
# Probabilities are floored here before logs: a label the judge gave no mass stays finite.
_FLOOR = 1e-12


def soft_targets(human: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """[N, K] targets: each human score split between the two label values around it."""
    order = np.argsort(values)
    sorted_values = np.asarray(values, dtype=float)[order]
    out = np.zeros((len(human), len(values)))
    for row, score in enumerate(human):
        score = float(np.clip(score, sorted_values[0], sorted_values[-1]))
        upper = int(np.searchsorted(sorted_values, score, side="left"))
        if upper == 0 or sorted_values[upper] == score:
            out[row, order[upper]] = 1.0
            continue
        lo, hi = sorted_values[upper - 1], sorted_values[upper]
        weight = (score - lo) / (hi - lo)
        out[row, order[upper - 1]] = 1.0 - weight
        out[row, order[upper]] = weight
    return out


def nearest_label(score: float, values: Sequence[float] | np.ndarray) -> int:
    """The index of the label whose value is nearest ``score`` (the first on ties)."""
    return min(range(len(values)), key=lambda i: abs(values[i] - score))


def cross_entropy(targets: np.ndarray, probs: np.ndarray) -> float:
    return float(-(targets * np.log(np.maximum(probs, _FLOOR))).sum(axis=1).mean())


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


# -- the maps ---------------------------------------------------------------------------


def fit_temperature_bias(probs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Temperature and per-label bias minimising the soft-target cross-entropy."""
    from scipy.optimize import minimize

    logs = np.log(np.maximum(probs, _FLOOR))
    count, k = probs.shape

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        inv_t, bias = math.exp(theta[0]), theta[1:]
        calibrated = _softmax(logs * inv_t + bias)
        value = -(targets * np.log(np.maximum(calibrated, _FLOOR))).sum() / count
        residual = (calibrated - targets) / count  # d loss / d logit
        grad = np.concatenate([[float((residual * logs).sum() * inv_t)], residual.sum(axis=0)])
        return value, grad

    result = minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B")
    return {"temperature": math.exp(-float(result.x[0])), "bias": [float(b) for b in result.x[1:]]}


def apply_temperature_bias(params: dict[str, Any], probs: np.ndarray) -> np.ndarray:
    logs = np.log(np.maximum(probs, _FLOOR))
    return _softmax(logs / params["temperature"] + np.asarray(params["bias"]))


def tilted(prior: np.ndarray, values: np.ndarray, mean: float) -> np.ndarray:
    """``prior * exp(beta * values)``, normalised, with ``beta`` such that its mean is
    ``mean``: the distribution nearest ``prior`` (in relative entropy) with that mean."""
    from scipy.optimize import brentq

    prior = np.maximum(prior, _FLOOR)
    if mean <= values.min() or mean >= values.max():
        return (values == (values.min() if mean <= values.min() else values.max())).astype(float)

    def tilt(beta: float) -> np.ndarray:
        weights = np.log(prior) + beta * values
        return _softmax(weights)

    beta = brentq(lambda b: float(tilt(b) @ values) - mean, -60.0, 60.0)
    return tilt(beta)


def fit_isotonic(
    expected: np.ndarray, human: np.ndarray, targets: np.ndarray, label_values: np.ndarray
) -> dict[str, Any]:
    """Isotonic bins on the expected score, each with its smoothed mean soft target."""
    from scipy.optimize import isotonic_regression

    order = np.argsort(expected, kind="stable")
    fitted = isotonic_regression(human[order], increasing=True).x
    prior = targets.mean(axis=0)
    knots: list[float] = []
    dists: list[list[float]] = []
    start = 0
    for end in range(1, len(order) + 1):
        if end < len(order) and math.isclose(fitted[end], fitted[start]):
            continue
        block = order[start:end]
        mean_target = targets[block].mean(axis=0)
        pseudo = tilted(prior, label_values, float(mean_target @ label_values))
        dist = (mean_target * len(block) + pseudo) / (len(block) + 1)
        for x in sorted({float(expected[block].min()), float(expected[block].max())}):
            knots.append(x)
            dists.append([float(p) for p in dist])
        start = end
    return {"knots": knots, "distributions": dists}


def apply_isotonic(params: dict[str, Any], expected: np.ndarray) -> np.ndarray:
    knots = np.asarray(params["knots"])
    dists = np.asarray(params["distributions"])
    # np.interp holds the end values beyond the first and last knot, as isotonic fits do.
    columns = [np.interp(expected, knots, dists[:, k]) for k in range(dists.shape[1])]
    out = np.stack(columns, axis=1)
    return out / out.sum(axis=1, keepdims=True)


def fit_map(kind: str, probs: np.ndarray, human: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    targets = soft_targets(human, values)
    if kind == "temperature_bias":
        return fit_temperature_bias(probs, targets)
    if kind == "isotonic":
        return fit_isotonic(probs @ values, human, targets, values)
    return {}


def apply_map(kind: str, params: dict[str, Any], probs: np.ndarray, values: np.ndarray) -> np.ndarray:
    if kind == "temperature_bias":
        return apply_temperature_bias(params, probs)
    if kind == "isotonic":
        return apply_isotonic(params, probs @ values)
    return probs


def cross_validate(probs: np.ndarray, human: np.ndarray, values: np.ndarray, folds: int, seed: int) -> dict[str, float]:
    """Mean held-out soft-target cross-entropy of every kind over ``folds`` seeded folds."""
    index = list(range(len(human)))
    random.Random(seed).shuffle(index)
    parts = [index[f::folds] for f in range(folds)]
    targets = soft_targets(human, values)
    losses = {kind: 0.0 for kind in KINDS}
    for part in parts:
        held = np.asarray(part)
        train = np.asarray([i for i in index if i not in set(part)])
        for kind in KINDS:
            params = fit_map(kind, probs[train], human[train], values)
            predicted = apply_map(kind, params, probs[held], values)
            losses[kind] += cross_entropy(targets[held], predicted) * len(held) / len(human)
    return losses


# -- the fitted calibration -------------------------------------------------------------


@dataclass
class Calibration:
    """A fitted map, what it was fitted for, and the review threshold it sets."""

    kind: str
    params: dict[str, Any]
    model: str
    labels: list[str]
    values: list[float]
    method: str
    template: str
    prompt_version: str
    # Split conformal: flag an item unless its prediction set is its one most probable label.
    target_error: float | None = None
    min_calibrated_probability: float | None = None
    cv_cross_entropy: dict[str, float] = field(default_factory=dict)
    fit_ids: list[str] = field(default_factory=list)
    conformal_ids: list[str] = field(default_factory=list)

    def mismatch(self, model: str, labels: Sequence[str], method: str, prompt_version: str) -> str | None:
        """Why this calibration does not apply to a result, or None when it does."""
        if model != self.model:
            return f"the calibration was fitted for model {self.model!r}, not {model!r}"
        if list(labels) != self.labels:
            return f"the calibration was fitted for labels {self.labels}, not {list(labels)}"
        if method != self.method:
            return f"the calibration was fitted for method {self.method!r}, not {method!r}"
        if prompt_version != self.prompt_version:
            return (
                f"the calibration was fitted for prompt version {self.prompt_version} "
                f"(template {self.template!r}), not {prompt_version}"
            )
        return None

    def apply(self, probs: Sequence[float]) -> tuple[float, ...]:
        """The calibrated distribution of one item."""
        out = apply_map(self.kind, self.params, np.asarray([probs], dtype=float), np.asarray(self.values))
        return tuple(float(p) for p in out[0])

    def apply_many(self, probs: np.ndarray) -> np.ndarray:
        return apply_map(self.kind, self.params, probs, np.asarray(self.values))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Calibration:
        data = json.loads(path.read_text())
        if data.get("kind") not in KINDS:
            raise ValueError(f"{path}: unknown calibration kind {data.get('kind')!r}")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def choose_and_fit(
    probs: np.ndarray, human: np.ndarray, values: np.ndarray, folds: int = 5, seed: int = 0
) -> tuple[str, dict[str, Any], dict[str, float]]:
    """Cross-validate every kind, then fit the best on all of ``probs``."""
    losses = cross_validate(probs, human, values, min(folds, len(human)), seed)
    kind = min(KINDS, key=lambda k: (losses[k], KINDS.index(k)))
    return kind, fit_map(kind, probs, human, values), losses

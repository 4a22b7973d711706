"""Label-distribution maths: from label log-probabilities to scores.

Given raw log-probabilities ``lp_i`` of the K labels (log-softmax over the whole
vocabulary) and label values ``v_i``:

- ``label_mass = sum_i exp(lp_i)``, the probability the model put on any label;
- ``p_i = exp(lp_i) / label_mass``, the renormalised distribution;
- ``expected_score = sum_i p_i v_i`` (G-Eval);
- ``std = sqrt(sum_i p_i (v_i - expected_score)^2)``;
- ``confidence = 1 - H(p) / log K`` with ``H(p) = -sum_i p_i log p_i``;
- ``mode`` = the label of the largest ``p_i`` (the first on ties).

LAGER (cross-layer aggregation) averages the label logits of every layer, optionally
with softmax-normalised layer weights, then applies the softmax and the same maths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Distribution:
    """A renormalised label distribution and the scores derived from it."""

    labels: tuple[str, ...]
    probs: tuple[float, ...]
    label_mass: float
    expected_score: float | None
    std: float | None
    confidence: float
    mode: str


def _log_sum_exp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def softmax(values: Sequence[float]) -> tuple[float, ...]:
    total = _log_sum_exp(values)
    if total == -math.inf:
        return tuple(1.0 / len(values) for _ in values)
    return tuple(math.exp(v - total) for v in values)


def label_values(labels: Sequence[str], overrides: dict[str, float] | None) -> tuple[float, ...] | None:
    """Each label's numeric value: the override, else the label read as a number.

    Returns None when some label has neither, so no expected score can be given.
    """
    values = []
    for label in labels:
        if overrides and label in overrides:
            values.append(float(overrides[label]))
            continue
        try:
            value = float(label)
        except ValueError:
            return None
        if not math.isfinite(value):
            return None
        values.append(value)
    return tuple(values)


def distribution(
    labels: Sequence[str],
    log_weights: Sequence[float],
    values: Sequence[float] | None,
    label_mass: float | None = None,
) -> Distribution:
    """Renormalise ``log_weights`` (log-probs or logits) over the labels and score them."""
    probs = softmax(log_weights)
    if label_mass is None:
        label_mass = math.exp(_log_sum_exp(log_weights))
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    confidence = min(1.0, max(0.0, 1.0 - entropy / math.log(len(probs))))
    mode = labels[max(range(len(probs)), key=lambda i: (probs[i], -i))]
    expected = std = None
    if values is not None:
        expected, std = moments(probs, values)
    return Distribution(tuple(labels), probs, label_mass, expected, std, confidence, mode)


def moments(probs: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation of ``values`` under ``probs``, finite for any finite values.

    Label values may be any finite float (1e200, or a label "1e308" read as its number), and
    squaring their deviations would overflow. So the sums run on the values scaled by a power
    of two into (-1, 1): scaling by a power of two is exact, so ordinary values give exactly
    the plain formula's floats, and the results, kept within what the values allow (the mean
    between the smallest and largest value, the std at most half their spread), scale back
    without overflow.
    """
    exponent = math.frexp(max(abs(v) for v in values))[1]
    unit = [math.ldexp(v, -exponent) for v in values]
    low, high = min(unit), max(unit)
    mean = min(high, max(low, sum(p * u for p, u in zip(probs, unit, strict=True))))
    variance = sum(p * (u - mean) ** 2 for p, u in zip(probs, unit, strict=True))
    spread = min((high - low) / 2, math.sqrt(max(0.0, variance)))
    return math.ldexp(mean, exponent), math.ldexp(spread, exponent)


def from_logprobs(labels: Sequence[str], logprobs: Sequence[float], values: Sequence[float] | None) -> Distribution:
    """The ``final`` method: the model's own next-token distribution over the labels."""
    return distribution(labels, logprobs, values, label_mass=min(1.0, math.exp(_log_sum_exp(logprobs))))


def lager_logits(layer_logits: Sequence[Sequence[float]], weights: Sequence[float] | None = None) -> tuple[float, ...]:
    """LAGER: aggregate the [layers x labels] logit matrix into one logit per label.

    Unweighted: the mean over every layer entry. Weighted: ``weights`` are raw per-layer
    parameters, softmax-normalised here; they cover every entry but the final normed one
    (the model's own output), as in the method's reference code.
    """
    rows = list(layer_logits)
    if weights is None:
        norm = [1.0 / len(rows)] * len(rows)
    else:
        if len(weights) == len(rows) - 1:
            rows = rows[:-1]
        if len(weights) != len(rows):
            raise ValueError(f"{len(weights)} layer weights for {len(layer_logits)} layer entries")
        norm = list(softmax(weights))
    width = len(rows[0])
    return tuple(sum(w * row[k] for w, row in zip(norm, rows, strict=True)) for k in range(width))


def from_probs(
    labels: Sequence[str], probs: Sequence[float], values: Sequence[float] | None, label_mass: float = 1.0
) -> Distribution:
    """Score a distribution given as probabilities (a calibrated or mixed one)."""
    logs = [math.log(p) if p > 0 else -math.inf for p in probs]
    return distribution(labels, logs, values, label_mass=label_mass)


def mixture(
    labels: Sequence[str], parts: Sequence[Distribution], weights: Sequence[float], values: Sequence[float] | None
) -> Distribution:
    """The weighted mixture of distributions over the same labels: its mean is the weighted
    mean of their expected scores; its label mass the weighted mean of theirs."""
    total = sum(weights)
    share = [w / total for w in weights]
    probs = [sum(s * part.probs[k] for s, part in zip(share, parts, strict=True)) for k in range(len(labels))]
    mass = sum(s * part.label_mass for s, part in zip(share, parts, strict=True))
    return from_probs(labels, probs, values, label_mass=mass)

"""Review flags: which results a person should look at, and why.

A result is flagged when one of these falls below its threshold:

- ``low_confidence``: the judge's ``confidence`` (1 - normalised entropy);
- ``low_label_mass``: its ``label_mass`` (the judge was not answering with a label);
- ``calibrated_uncertain``: with a calibration, the calibrated distribution does not pin
  one label at the calibration's level (see below).

The calibration's threshold comes from split conformal prediction. On items the
calibration map was not fitted on, the nonconformity of an item is ``1 - p(y)``, with
``p`` its calibrated distribution and ``y`` the label nearest its human score; ``q`` is
the ``ceil((n + 1)(1 - alpha)) / n`` empirical quantile of the n scores. The prediction
set of a new item is every label with ``p >= 1 - q``. For a new item exchangeable with
those n, the set holds the human label with probability at least ``1 - alpha``. An item
is flagged ``calibrated_uncertain`` unless its set is exactly its most probable label, so
the share of items that are *not* flagged and yet have the wrong label is at most
``alpha``. This is a marginal guarantee over items like the conformal ones, not a
guarantee for each item, and it needs the new items to come from the same distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LOW_CONFIDENCE = "low_confidence"
LOW_LABEL_MASS = "low_label_mass"
CALIBRATED_UNCERTAIN = "calibrated_uncertain"


@dataclass(frozen=True, slots=True)
class ReviewThresholds:
    """Each None turns its check off."""

    min_confidence: float | None = None
    min_label_mass: float | None = None
    min_calibrated_probability: float | None = None


def conformal_threshold(true_label_probs: Sequence[float], target_error: float) -> float:
    """The smallest calibrated probability a label may have and stay in the prediction set
    (``1 - q``), from the calibrated probability of the true label of n held-out items."""
    scores = sorted(1.0 - p for p in true_label_probs)
    n = len(scores)
    if n == 0:
        raise ValueError("split conformal needs at least one held-out item")
    rank = math.ceil((n + 1) * (1.0 - target_error))
    if rank > n:
        # Too few items for this error rate: every label stays in every set.
        return 0.0
    return max(0.0, 1.0 - scores[rank - 1])


def prediction_set(probs: Sequence[float], min_probability: float) -> tuple[int, ...]:
    """The labels (by index) whose calibrated probability reaches the threshold."""
    return tuple(i for i, p in enumerate(probs) if p >= min_probability)


def pins_one_label(probs: Sequence[float], min_probability: float) -> bool:
    """Whether the prediction set is exactly the most probable label."""
    members = prediction_set(probs, min_probability)
    top = max(range(len(probs)), key=lambda i: (probs[i], -i))
    return members == (top,)


def reasons(
    confidence: float,
    label_mass: float,
    calibrated: Sequence[float] | None,
    thresholds: ReviewThresholds,
) -> tuple[str, ...]:
    """Why a result needs review (empty: it does not)."""
    out = []
    if thresholds.min_confidence is not None and confidence < thresholds.min_confidence:
        out.append(LOW_CONFIDENCE)
    if thresholds.min_label_mass is not None and label_mass < thresholds.min_label_mass:
        out.append(LOW_LABEL_MASS)
    limit = thresholds.min_calibrated_probability
    if calibrated is not None and limit is not None and not pins_one_label(calibrated, limit):
        out.append(CALIBRATED_UNCERTAIN)
    return tuple(out)

"""The pairwise maths: order swapping, consistency, length control."""

from __future__ import annotations

import pytest

from service.methods import pairwise


def test_pairwise_maths() -> None:
    assert pairwise.in_ab_terms([0.1, 0.2, 0.3, 0.15, 0.25], "ba") == (0.25, 0.15, 0.3, 0.2, 0.1)
    assert pairwise.consistency([1, 0, 0, 0, 0], [1, 0, 0, 0, 0]) == 1.0
    assert pairwise.consistency([1, 0, 0, 0, 0], [0, 0, 0, 0, 1]) == 0.0
    probs = (0.1, 0.4, 0.2, 0.2, 0.1)
    assert pairwise.length_controlled(probs, 500, 10, 100) == pytest.approx((0.1, 0.0, 0.6, 0.2, 0.1))
    assert pairwise.length_controlled(probs, 10, 500, 100) == pytest.approx((0.1, 0.4, 0.4, 0.0, 0.1))
    assert pairwise.length_controlled(probs, 10, 50, 100) == probs

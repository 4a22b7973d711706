"""Ranking maths: which pairs to compare, the Bradley-Terry fit, bootstrap intervals.

Each compared pair (i, j) gives a soft win ``w_ij = P(i beats j) = p_i_wins + p_tie / 2``
from the judge's order-averaged verdict, and ``w_ji = 1 - w_ij``. The Bradley-Terry model
``P(i beats j) = sigmoid(s_i - s_j)`` is fitted by maximum likelihood on those soft wins,
``sum_ij w_ij log sigmoid(s_i - s_j)``, with a weak Gaussian prior on each strength
(``prior``, the inverse variance) that keeps the fit finite when a candidate wins or
loses everything. Strengths are centred to mean 0 and reported as the candidate's score.

Designs: up to ``ALL_PAIRS_MAX`` candidates every pair is compared; above it a
circulant design of O(N log N) pairs, after a seeded shuffle: candidate k meets the
candidates 1, 2, 4, ... places after it, up to half way round, so every candidate is in
about 2 log2 N comparisons and any two are linked by a chain of at most log2 N of them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

ALL_PAIRS_MAX = 8
PRIOR = 0.01
BOOTSTRAP_SAMPLES = 200


def all_pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def circulant_pairs(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """O(N log N) pairs: after a seeded shuffle, each candidate meets those 2^k places on."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    pairs: set[tuple[int, int]] = set()
    offset = 1
    while offset <= n // 2:
        for k in range(n):
            a, b = order[k], order[(k + offset) % n]
            pairs.add((min(a, b), max(a, b)))
        offset *= 2
    return sorted(pairs)


def design(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """The pairs to compare for ``n`` candidates."""
    return all_pairs(n) if n <= ALL_PAIRS_MAX else circulant_pairs(n, seed)


def win_matrix(n: int, pairs: Sequence[tuple[int, int]], p_first_wins: Sequence[float]) -> np.ndarray:
    """``W[i, j]``: soft wins of i over j, from each pair's probability that its first wins."""
    wins = np.zeros((n, n))
    for (i, j), p in zip(pairs, p_first_wins, strict=True):
        wins[i, j] += p
        wins[j, i] += 1.0 - p
    return wins


def fit_bradley_terry(wins: np.ndarray, prior: float = PRIOR, iterations: int = 100) -> np.ndarray:
    """Strengths maximising ``sum_ij W_ij log sigmoid(s_i - s_j) - prior/2 |s|^2``, centred.

    Newton's method on a concave objective, each step halved until the objective rises.
    The likelihood is unchanged by a shift of every strength; adding ``J/n`` (J the
    all-ones matrix) to the negated Hessian makes each step the one with no shift."""
    n = wins.shape[0]
    games = wins + wins.T
    ones = np.full((n, n), 1.0 / n)

    def objective(s: np.ndarray) -> float:
        diff = s[:, None] - s[None, :]
        return float((wins * -np.logaddexp(0.0, -diff)).sum()) - 0.5 * prior * float(s @ s)

    s = np.zeros(n)
    current = objective(s)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))  # P(i beats j)
        grad = wins.sum(axis=1) - (games * p).sum(axis=1) - prior * s
        curvature = games * p * p.T
        negated_hessian = np.diag(curvature.sum(axis=1)) - curvature + prior * np.eye(n) + ones
        step = np.linalg.solve(negated_hessian, grad)
        rate = 1.0
        while rate > 1e-6:
            trial = s + rate * step
            value = objective(trial)
            if value >= current - 1e-12:
                break
            rate /= 2
        s, previous, current = trial, current, value
        if abs(current - previous) < 1e-12 and float(np.abs(grad).max()) < 1e-9:
            break
    return s - s.mean()


def bootstrap_intervals(
    n: int,
    pairs: Sequence[tuple[int, int]],
    p_first_wins: Sequence[float],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile intervals of every strength and every rank, resampling the compared
    pairs with replacement. Returns ([n, 2] strength bounds, [n, 2] rank bounds)."""
    rng = np.random.default_rng(seed)
    draws, ranks = np.zeros((samples, n)), np.zeros((samples, n))
    for b in range(samples):
        chosen = rng.integers(0, len(pairs), len(pairs))
        strengths = fit_bradley_terry(win_matrix(n, [pairs[c] for c in chosen], [p_first_wins[c] for c in chosen]))
        draws[b] = strengths
        ranks[b] = ranks_of(strengths)
    bounds = np.percentile(draws, [2.5, 97.5], axis=0).T
    rank_bounds = np.percentile(ranks, [2.5, 97.5], axis=0).T
    return bounds, rank_bounds


def ranks_of(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Rank 1 for the highest score; ties broken by position (the earlier first)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    out = np.zeros(len(scores))
    for rank, index in enumerate(order, start=1):
        out[index] = rank
    return out


def kendall_tau(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-a between two score lists (1: the same order)."""
    n = len(a)
    pairs = n * (n - 1) / 2
    if pairs == 0:
        return math.nan
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            total += float(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]))
    return total / pairs

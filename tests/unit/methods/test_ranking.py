"""Ranking maths: the Bradley-Terry fit against an independent maximum-likelihood fit, and
the comparison designs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.methods import ranking


def minorise_maximise(wins: np.ndarray, iterations: int = 20000) -> np.ndarray:
    """Hunter's (2004) MM algorithm for the Bradley-Terry maximum-likelihood strengths:
    ``p_i <- W_i / sum_j n_ij / (p_i + p_j)``, an independent route to the same optimum."""
    n = wins.shape[0]
    games = wins + wins.T
    p = np.ones(n)
    for _ in range(iterations):
        denominators = np.array([sum(games[i, j] / (p[i] + p[j]) for j in range(n) if j != i) for i in range(n)])
        p = wins.sum(axis=1) / denominators
        p /= np.exp(np.log(p).mean())
    strengths = np.log(p)
    return strengths - strengths.mean()


def test_bradley_terry_equals_a_direct_maximum_likelihood_fit() -> None:
    # A hand-built win matrix: W[i, j] wins of i over j (4 candidates, uneven games).
    wins = np.array(
        [
            [0, 7, 9, 3],
            [3, 0, 6, 5],
            [1, 4, 0, 2],
            [2, 5, 8, 0],
        ],
        dtype=float,
    )
    fitted = ranking.fit_bradley_terry(wins, prior=0.0)
    assert fitted == pytest.approx(minorise_maximise(wins), abs=1e-5)
    assert fitted.mean() == pytest.approx(0.0, abs=1e-12)
    assert list(ranking.ranks_of(fitted)) == [1, 3, 4, 2]


def test_soft_wins_from_a_known_model_are_recovered() -> None:
    truth = np.array([1.5, 0.5, 0.0, -0.5, -1.5])
    truth -= truth.mean()
    pairs = ranking.all_pairs(5)
    p_first = [1 / (1 + np.exp(-(truth[i] - truth[j]))) for i, j in pairs]
    fitted = ranking.fit_bradley_terry(ranking.win_matrix(5, pairs, p_first), prior=0.0)
    assert fitted == pytest.approx(truth, abs=1e-5)
    # The served fit has a weak prior, which shrinks a little towards 0; its bootstrap
    # intervals hold its own estimate.
    served = ranking.fit_bradley_terry(ranking.win_matrix(5, pairs, p_first))
    assert served == pytest.approx(truth, abs=0.1)
    bounds, rank_bounds = ranking.bootstrap_intervals(5, pairs, p_first, samples=50)
    assert np.all(bounds[:, 0] <= served + 1e-6) and np.all(served - 1e-6 <= bounds[:, 1])
    assert np.all(rank_bounds[:, 0] >= 1) and np.all(rank_bounds[:, 1] <= 5)


@pytest.mark.parametrize("n", [9, 12, 16, 33, 64])
def test_circulant_design_is_n_log_n_and_connected(n: int) -> None:
    pairs = ranking.design(n, seed=0)
    assert len(pairs) == len(set(pairs)) and all(i < j for i, j in pairs)
    assert len(pairs) <= n * int(np.ceil(np.log2(n)))
    assert len(pairs) < n * (n - 1) // 2
    # Connected: every candidate is reached from candidate 0.
    reached, frontier = {0}, [0]
    while frontier:
        node = frontier.pop()
        for i, j in pairs:
            for a, b in ((i, j), (j, i)):
                if a == node and b not in reached:
                    reached.add(b)
                    frontier.append(b)
    assert reached == set(range(n))


def test_small_sets_compare_every_pair() -> None:
    for n in range(2, ranking.ALL_PAIRS_MAX + 1):
        assert ranking.design(n) == list(itertools.combinations(range(n), 2))


def test_kendall_tau() -> None:
    assert ranking.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert ranking.kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    assert ranking.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)

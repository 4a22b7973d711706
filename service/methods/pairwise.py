"""Pairwise judging maths: order-swapped five-way verdicts.

The judge reads the distribution over five labels meaning Response 1 much better,
slightly better, tie, Response 2 slightly better, much better (``prompts.VERDICT_LABELS``).
In order "ab" Response 1 is A; in order "ba" it is B, so that order's distribution is
reversed before the two are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.methods.scoring import softmax

VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")


def in_ab_terms(probs: Sequence[float], order: str) -> tuple[float, ...]:
    """A distribution over the labels of one order, as P(A>>B, A>B, A=B, B>A, B>>A)."""
    return tuple(probs) if order == "ab" else tuple(reversed(probs))


def consistency(ab: Sequence[float], ba: Sequence[float]) -> float:
    """1 - total variation distance: 1 when both orders agree exactly, 0 when disjoint."""
    return 1.0 - 0.5 * sum(abs(x - y) for x, y in zip(ab, ba, strict=True))


def length_controlled(probs: Sequence[float], len_a: int, len_b: int, k: int) -> tuple[float, ...]:
    """WildBench: a slight win by a response longer than the other by more than k
    characters counts as a tie."""
    much_a, slight_a, tie, slight_b, much_b = probs
    if len_a - len_b > k:
        tie, slight_a = tie + slight_a, 0.0
    if len_b - len_a > k:
        tie, slight_b = tie + slight_b, 0.0
    return (much_a, slight_a, tie, slight_b, much_b)


def summarise(probs: Sequence[float]) -> tuple[float, float, float, str]:
    """(p_a_wins, p_tie, p_b_wins, the most probable verdict) of a five-way distribution."""
    verdict = VERDICTS[max(range(5), key=lambda i: (probs[i], -i))]
    return probs[0] + probs[1], probs[2], probs[3] + probs[4], verdict


def first_wins(logprobs: Sequence[Sequence[float]]) -> list[float]:
    """Per pair, from its two verdicts' label log-probabilities (its first candidate shown
    first, then second), the probability that its first candidate wins, from the
    order-averaged verdict; a tie is half a win for each side."""
    out = []
    for k in range(len(logprobs) // 2):
        ab = in_ab_terms(softmax(logprobs[2 * k]), "ab")
        ba = in_ab_terms(softmax(logprobs[2 * k + 1]), "ba")
        p_a, p_tie, _, _ = summarise([(x + y) / 2 for x, y in zip(ab, ba, strict=True)])
        out.append(p_a + p_tie / 2)
    return out

"""A ``/v1/rank`` request prepared. Pointwise: one task per candidate, scored alone under
a rubric whose criteria are the request's. Pairwise: the pairs of ``ranking.design``,
each judged in both orders; the answer's fit needs those pairs."""

from __future__ import annotations

from dataclasses import dataclass

from judge_client.rank import RankRequest

from service.core.tasks import ScoringTask
from service.methods import ranking
from service.requests.limits import Limits
from service.requests.prepared import Prepared
from service.requests.prompts import DEFAULT_RUBRIC, VERDICT_LABELS, Prompts, Rubric


@dataclass(frozen=True)
class RankPlan:
    """What a ranking's answer is built with: its prompt version and, pairwise, the pairs
    judged (candidate indices, in the order of their tasks)."""

    prompt_version: str
    pairs: list[tuple[int, int]]


def prepare_rank(request: RankRequest, prompts: Prompts, limits: Limits) -> Prepared[RankPlan]:
    limits.caps.check_candidates(len(request.candidates))
    if request.strategy == "pointwise":
        rubric = pointwise_rubric(request)
        return Prepared(pointwise_tasks(request, rubric, prompts, limits), RankPlan(prompts.score_version(rubric), []))
    pairs = ranking.design(len(request.candidates))
    plan = RankPlan(prompts.pair_version(request.criteria), pairs)
    return Prepared(pairwise_tasks(request, pairs, prompts, limits), plan)


def pointwise_rubric(request: RankRequest) -> Rubric:
    """The default rubric, with the request's criteria if it gives any."""
    if request.criteria is None:
        return DEFAULT_RUBRIC
    return Rubric(request.criteria, DEFAULT_RUBRIC.score_descriptions)


def pointwise_tasks(request: RankRequest, rubric: Rubric, prompts: Prompts, limits: Limits) -> list[ScoringTask]:
    """One task per candidate, in order."""
    trie = limits.tokens.label_trie(rubric.labels)
    texts = [prompts.score(request.instruction, c.response, None, rubric) for c in request.candidates]
    return [
        ScoringTask.reading(limits.tokens.encode(text, i, c.id), trie)
        for i, (c, text) in enumerate(zip(request.candidates, texts, strict=True))
    ]


def pairwise_tasks(
    request: RankRequest, pairs: list[tuple[int, int]], prompts: Prompts, limits: Limits
) -> list[ScoringTask]:
    """Two tasks per pair: its first candidate shown first, then second."""
    limits.work.check_prompts(2 * len(pairs))
    trie = limits.tokens.label_trie(VERDICT_LABELS)
    candidates = request.candidates
    tasks = []
    for i, j in pairs:
        for first, second in ((i, j), (j, i)):
            text = prompts.pair(
                request.instruction, candidates[first].response, candidates[second].response, request.criteria
            )
            tasks.append(ScoringTask.reading(limits.tokens.encode(text, first, candidates[first].id), trie))
    return tasks

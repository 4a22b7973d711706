"""``/v1/rank``: N candidate responses to one instruction -> a ranking, best first.

Pairwise: the pairs of ``ranking.design`` (every pair up to 8 candidates, O(N log N)
above), each judged in both orders as ``/v1/compare`` does, then a Bradley-Terry fit with
bootstrap intervals. Pointwise: each candidate scored alone under a rubric whose criteria
are the request's, ranked by expected score.
"""

from __future__ import annotations

from judge_client.rank import RankedCandidate, RankRequest, RankResponse

from service.core.tasks import LabelScores
from service.methods import pairwise, ranking, scoring
from service.requests.prepared import Prepared
from service.requests.prompts import DEFAULT_RUBRIC
from service.requests.rank import RankPlan, prepare_rank
from service.serving.endpoint import Endpoint, Judge, Tally


class RankService(Endpoint[RankRequest, RankPlan, RankResponse]):
    name = "rank"
    # The pairwise fit and its bootstrap are CPU work.
    respond_in_thread = True

    def prepare(self, request: RankRequest, judge: Judge) -> Prepared[RankPlan]:
        return prepare_rank(request, judge.prompts, judge.limits)

    def respond(
        self, request: RankRequest, judge: Judge, prepared: Prepared[RankPlan], results: list[LabelScores]
    ) -> RankResponse:
        plan = prepared.context
        if request.strategy == "pointwise":
            ranked = _pointwise(request, results)
        else:
            ranked = _pairwise(request, plan.pairs, results)
        return RankResponse(
            model=judge.model,
            strategy=request.strategy,
            prompt_version=plan.prompt_version,
            ranking=sorted(ranked, key=lambda r: r.rank),
            comparisons=len(plan.pairs),
        )

    def tally(self, request: RankRequest, response: RankResponse) -> Tally:
        return Tally(request.strategy, len(request.candidates))


def _pointwise(request: RankRequest, results: list[LabelScores]) -> list[RankedCandidate]:
    dists = [scoring.from_logprobs(DEFAULT_RUBRIC.labels, r.logprobs, (1, 2, 3, 4, 5)) for r in results]
    scores = [d.expected_score or 0.0 for d in dists]
    ranks = ranking.ranks_of(scores)
    return [
        RankedCandidate(id=c.id, rank=int(rank), score=score, interval=None, rank_interval=None, wins=None, std=d.std)
        for c, rank, score, d in zip(request.candidates, ranks, scores, dists, strict=True)
    ]


def _pairwise(request: RankRequest, pairs: list[tuple[int, int]], results: list[LabelScores]) -> list[RankedCandidate]:
    n = len(request.candidates)
    p_first = pairwise.first_wins([r.logprobs for r in results])
    wins = ranking.win_matrix(n, pairs, p_first)
    strengths = ranking.fit_bradley_terry(wins)
    bounds, rank_bounds = ranking.bootstrap_intervals(n, pairs, p_first)
    ranks = ranking.ranks_of(list(strengths))
    return [
        RankedCandidate(
            id=c.id,
            rank=int(ranks[i]),
            score=float(strengths[i]),
            interval=[float(bounds[i, 0]), float(bounds[i, 1])],
            rank_interval=[float(rank_bounds[i, 0]), float(rank_bounds[i, 1])],
            wins=float(wins[i].sum()),
            std=None,
        )
        for i, c in enumerate(request.candidates)
    ]

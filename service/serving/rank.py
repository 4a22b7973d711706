"""``/v1/rank``: N candidate responses to one instruction -> a ranking, best first.

Pairwise: the pairs of ``ranking.design`` (every pair up to 8 candidates, O(N log N)
above), each judged in both orders as ``/v1/compare`` does, then a Bradley-Terry fit with
bootstrap intervals. Pointwise: each candidate scored alone under a rubric whose criteria
are the request's, ranked by expected score.
"""

from __future__ import annotations

import asyncio

from judge_client.rank import RankedCandidate, RankRequest, RankResponse

from service.core.tasks import LabelScores, ScoringTask
from service.methods import pairwise, ranking, scoring
from service.requests.prompts import DEFAULT_RUBRIC, VERDICT_LABELS, Rubric
from service.serving.runner import Runner
from service.serving.runtime import Runtime
from service.serving.score import Disconnected


class RankService:
    def __init__(self, runtime: Runtime, runner: Runner | None = None) -> None:
        self.runtime = runtime
        self.runner: Runner = runner if runner is not None else runtime.online

    async def rank(
        self,
        request: RankRequest,
        timeout_s: float | None,
        disconnected: Disconnected,
        arrived: float | None = None,
    ) -> RankResponse:
        prompts, limits = self.runtime.require_ready()
        deadline = limits.work.deadline(timeout_s, arrived)
        limits.caps.check_candidates(len(request.candidates))
        if request.strategy == "pointwise":
            rubric = self._rubric(request)
            version = prompts.score_version(rubric)
            tasks = await asyncio.to_thread(self._pointwise_tasks, request, rubric)
            results = await self.runner.run(tasks, deadline, disconnected)
            ranked, comparisons = self._pointwise(request, results), 0
        else:
            version = prompts.pair_version(request.criteria)
            pairs = ranking.design(len(request.candidates))
            tasks = await asyncio.to_thread(self.pairwise_tasks, request, pairs)
            results = await self.runner.run(tasks, deadline, disconnected)
            # The fit and its bootstrap are CPU work: off the event loop.
            ranked = await asyncio.to_thread(self._pairwise, request, pairs, results)
            comparisons = len(pairs)
        self.runtime.metrics.answered(
            "rank", request.strategy, len(request.candidates), len(tasks), sum(t.length for t in tasks)
        )
        return RankResponse(
            model=self.runtime.model_name,
            strategy=request.strategy,
            prompt_version=version,
            ranking=sorted(ranked, key=lambda r: r.rank),
            comparisons=comparisons,
        )

    @staticmethod
    def _rubric(request: RankRequest) -> Rubric:
        if request.criteria is None:
            return DEFAULT_RUBRIC
        return Rubric(request.criteria, DEFAULT_RUBRIC.score_descriptions)

    def _pointwise_tasks(self, request: RankRequest, rubric: Rubric) -> list[ScoringTask]:
        prompts, limits = self.runtime.require_ready()
        trie = limits.tokens.label_trie(rubric.labels)
        texts = [prompts.score(request.instruction, c.response, None, rubric) for c in request.candidates]
        return [
            ScoringTask.reading(limits.tokens.encode(text, i, c.id), trie)
            for i, (c, text) in enumerate(zip(request.candidates, texts, strict=True))
        ]

    def pairwise_tasks(self, request: RankRequest, pairs: list[tuple[int, int]]) -> list[ScoringTask]:
        """Two tasks per pair: its first candidate shown first, then second."""
        prompts, limits = self.runtime.require_ready()
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

    @staticmethod
    def _pointwise(request: RankRequest, results: list[LabelScores]) -> list[RankedCandidate]:
        dists = [scoring.from_logprobs(DEFAULT_RUBRIC.labels, r.logprobs, (1, 2, 3, 4, 5)) for r in results]
        scores = [d.expected_score or 0.0 for d in dists]
        ranks = ranking.ranks_of(scores)
        return [
            RankedCandidate(
                id=c.id, rank=int(rank), score=score, interval=None, rank_interval=None, wins=None, std=d.std
            )
            for c, rank, score, d in zip(request.candidates, ranks, scores, dists, strict=True)
        ]

    @staticmethod
    def first_wins(results: list[LabelScores]) -> list[float]:
        """Per pair (two results: each order), the probability that its first candidate
        wins, from the order-averaged verdict; a tie is half a win for each side."""
        out = []
        for k in range(len(results) // 2):
            ab = pairwise.in_ab_terms(scoring.softmax(results[2 * k].logprobs), "ab")
            ba = pairwise.in_ab_terms(scoring.softmax(results[2 * k + 1].logprobs), "ba")
            p_a, p_tie, _, _ = pairwise.summarise([(x + y) / 2 for x, y in zip(ab, ba, strict=True)])
            out.append(p_a + p_tie / 2)
        return out

    @staticmethod
    def _pairwise(
        request: RankRequest, pairs: list[tuple[int, int]], results: list[LabelScores]
    ) -> list[RankedCandidate]:
        n = len(request.candidates)
        p_first = RankService.first_wins(results)
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

"""``/v1/compare``: pairs of responses -> order-averaged five-way verdicts.

In critique mode each order is a critique task of its own: the judge explains first, in
that order, and that order's verdict is read after its marker; the orders are then
averaged as without a critique.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from judge_client.compare import ComparePair, CompareRequest, CompareResponse, OrderCritique, PairVerdict

from service.core.tasks import LabelScores, ScoringTask
from service.methods import pairwise, scoring
from service.methods.pairwise import VERDICTS
from service.requests.limits import Limits
from service.requests.prompts import VERDICT_LABELS, Prompts
from service.serving.runner import Runner
from service.serving.runtime import Runtime
from service.serving.score import Disconnected

ORDERS = ("ab", "ba")


class CompareService:
    def __init__(self, runtime: Runtime, runner: Runner | None = None) -> None:
        self.runtime = runtime
        self.runner: Runner = runner if runner is not None else runtime.online

    async def compare(
        self,
        request: CompareRequest,
        timeout_s: float | None,
        disconnected: Disconnected,
        arrived: float | None = None,
    ) -> CompareResponse:
        prompts, limits = self.runtime.require_ready()
        deadline = limits.work.deadline(timeout_s, arrived)
        chat_kwargs = limits.caps.chat_template_kwargs(request.chat_template_kwargs)
        tasks = await asyncio.to_thread(self._tasks, request, prompts, limits, chat_kwargs)
        results = await self.runner.run(tasks, deadline, disconnected)
        per_pair = 2 if request.swap else 1
        verdicts = [
            self._verdict(
                pair, request, results[i * per_pair : (i + 1) * per_pair], tasks[i * per_pair : (i + 1) * per_pair]
            )
            for i, pair in enumerate(request.pairs)
        ]
        tokens = sum(t.length for t in tasks)
        self.runtime.metrics.answered("compare", "final", len(verdicts), len(tasks), tokens)
        marker = request.critique.marker if request.critique is not None else None
        version = prompts.pair_version(request.criteria, chat_kwargs, marker)
        return CompareResponse(model=self.runtime.model_name, prompt_version=version, results=verdicts)

    @staticmethod
    def _tasks(
        request: CompareRequest, prompts: Prompts, limits: Limits, chat_kwargs: Mapping[str, Any]
    ) -> list[ScoringTask]:
        """Two tasks per pair (A first, then B first), or one without swapping; in critique
        mode each is a critique task, with its own critique in its own order."""
        limits.caps.check_count(len(request.pairs), "pairs")
        limits.work.check_prompts(len(request.pairs) * (2 if request.swap else 1))
        trie = limits.tokens.label_trie(VERDICT_LABELS)
        spec = request.critique
        critique = limits.critique(spec.max_tokens, spec.marker, False) if spec is not None else None
        marker = spec.marker if spec is not None else None
        tasks = []
        for index, pair in enumerate(request.pairs):
            orders = [(pair.response_a, pair.response_b)]
            if request.swap:
                orders.append((pair.response_b, pair.response_a))
            for first, second in orders:
                text = prompts.pair(pair.instruction, first, second, request.criteria, chat_kwargs, marker)
                token_ids = limits.tokens.encode(text, index, pair.id, critique)
                tasks.append(ScoringTask.reading(token_ids, trie, critique=critique))
        return tasks

    @staticmethod
    def _verdict(
        pair: ComparePair, request: CompareRequest, results: list[LabelScores], tasks: list[ScoringTask]
    ) -> PairVerdict:
        orders = {
            order: pairwise.in_ab_terms(scoring.softmax(result.logprobs), order)
            for order, result in zip(ORDERS, results, strict=False)
        }
        mean = tuple(sum(column) / len(orders) for column in zip(*orders.values(), strict=True))
        if request.length_control is not None:
            mean = pairwise.length_controlled(
                mean, len(pair.response_a), len(pair.response_b), request.length_control.k
            )
        p_a_wins, p_tie, p_b_wins, verdict = pairwise.summarise(mean)
        return PairVerdict(
            id=pair.id,
            distribution=dict(zip(VERDICTS, mean, strict=True)),
            p_a_wins=p_a_wins,
            p_tie=p_tie,
            p_b_wins=p_b_wins,
            verdict=verdict,
            position_consistency=pairwise.consistency(orders["ab"], orders["ba"]) if request.swap else None,
            orders={order: dict(zip(VERDICTS, probs, strict=True)) for order, probs in orders.items()},
            prompt_tokens=sum(t.length for t in tasks),
            critiques=_critiques(results) if request.critique is not None else None,
        )


def _critiques(results: list[LabelScores]) -> dict[str, OrderCritique]:
    """Each order's critique, keyed as ``orders``."""
    out = {}
    for order, result in zip(ORDERS, results, strict=False):
        c = result.critique
        assert c is not None  # a critique task's result carries its critique
        out[order] = OrderCritique(critique=c.text, marker_found=c.marker_found, critique_tokens=c.tokens)
    return out

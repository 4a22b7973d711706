"""``/v1/compare``: pairs of responses -> order-averaged five-way verdicts.

In critique mode each order is a critique task of its own: the judge explains first, in
that order, and that order's verdict is read after its marker; the orders are then
averaged as without a critique.
"""

from __future__ import annotations

from judge_client.compare import ComparePair, CompareRequest, CompareResponse, OrderCritique, PairVerdict

from service.core.tasks import LabelScores, ScoringTask
from service.methods import pairwise, scoring
from service.methods.pairwise import VERDICTS
from service.requests.compare import ORDERS, prepare_compare
from service.requests.prepared import Prepared
from service.serving.endpoint import Endpoint, Judge, Tally


class CompareService(Endpoint[CompareRequest, str, CompareResponse]):
    """A handler whose prepared context is the answer's prompt version."""

    name = "compare"

    def prepare(self, request: CompareRequest, judge: Judge) -> Prepared[str]:
        return prepare_compare(request, judge.prompts, judge.limits)

    def respond(
        self, request: CompareRequest, judge: Judge, prepared: Prepared[str], results: list[LabelScores]
    ) -> CompareResponse:
        tasks = prepared.tasks
        n = 2 if request.swap else 1
        verdicts = [
            _verdict(pair, request, results[i * n : (i + 1) * n], tasks[i * n : (i + 1) * n])
            for i, pair in enumerate(request.pairs)
        ]
        return CompareResponse(model=judge.model, prompt_version=prepared.context, results=verdicts)

    def tally(self, request: CompareRequest, response: CompareResponse) -> Tally:
        return Tally("final", len(response.results))


def _verdict(
    pair: ComparePair, request: CompareRequest, results: list[LabelScores], tasks: list[ScoringTask]
) -> PairVerdict:
    orders = {
        order: pairwise.in_ab_terms(scoring.softmax(result.logprobs), order)
        for order, result in zip(ORDERS, results, strict=False)
    }
    mean = tuple(sum(column) / len(orders) for column in zip(*orders.values(), strict=True))
    if request.length_control is not None:
        mean = pairwise.length_controlled(mean, len(pair.response_a), len(pair.response_b), request.length_control.k)
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

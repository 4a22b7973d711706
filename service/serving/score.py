"""``/v1/score``: items against a rubric (or raw prompts against labels) -> label distributions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from judge_client.protocol import (
    ItemScore,
    RawItem,
    RawScoreRequest,
    ScoreResponse,
    StructuredItem,
    StructuredScoreRequest,
)

from service import scoring
from service.engines import LabelScores, ScoringTask
from service.lager import LayerWeights
from service.prompts import DEFAULT_RUBRIC, Rubric
from service.runtime import Runtime

ScoreRequest = RawScoreRequest | StructuredScoreRequest
Disconnected = Callable[[], Awaitable[None]] | None


def method_distribution(
    method: str,
    labels: Sequence[str],
    values: Sequence[float] | None,
    result: LabelScores,
    layer_norm: bool,
    weights: LayerWeights | None,
) -> scoring.Distribution:
    """The distribution a method forms from one engine result."""
    if method == "lager":
        layers = result.layer_logits_normed if layer_norm else result.layer_logits
        assert layers is not None
        return scoring.distribution(labels, scoring.lager_logits(layers), values)
    if method == "lager_weighted":
        assert weights is not None
        # Weights apply to the layer variant they were fitted on.
        fitted = result.layer_logits_normed if weights.layer_norm else result.layer_logits
        assert fitted is not None
        return scoring.distribution(labels, scoring.lager_logits(fitted, weights.weights), values)
    return scoring.from_logprobs(labels, result.logprobs, values)


class ScoreService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def score(
        self,
        request: ScoreRequest,
        timeout_s: float | None,
        disconnected: Disconnected,
        arrived: float | None = None,
    ) -> ScoreResponse:
        _, limits = self.runtime.require_ready()
        deadline = limits.deadline(timeout_s, arrived)
        tasks = await asyncio.to_thread(self.tasks, request)
        results = await self.runtime.run(tasks, deadline, disconnected)
        labels = request.label_set
        values = scoring.label_values(labels, request.label_values)
        layer_norm = self.runtime.settings.lager_layer_norm if request.layer_norm is None else request.layer_norm
        items: Sequence[RawItem | StructuredItem] = request.items
        scores = [
            self._item_score(item.id, labels, values, result, task.length, request, layer_norm)
            for item, task, result in zip(items, tasks, results, strict=True)
        ]
        metrics = self.runtime.metrics
        metrics.answered("score", request.method, len(scores), len(tasks), sum(t.length for t in tasks))
        for item_score in scores:
            if item_score.expected_score is not None:
                metrics.expected_score.observe(item_score.expected_score)
        return ScoreResponse(model=self.runtime.model_name, method=request.method, results=scores)

    def tasks(self, request: ScoreRequest) -> list[ScoringTask]:
        """Render and tokenise every item; every limit is checked before anything is queued."""
        prompts, limits = self.runtime.require_ready()
        want_layers = limits.wants_layers(request.method, request.return_layers)
        limits.check_count(len(request.items), "items")
        trie = limits.label_trie(request.label_set, want_layers)
        spec = request.critique
        critique = limits.critique(spec.max_tokens, spec.marker, want_layers) if spec is not None else None
        texts: list[str]
        if isinstance(request, RawScoreRequest):
            texts = [item.prompt for item in request.items]
        else:
            rubric = DEFAULT_RUBRIC
            if request.rubric is not None:
                rubric = Rubric(request.rubric.criteria, tuple(request.rubric.score_descriptions.items()))
            texts = [prompts.score(i.instruction, i.response, i.reference_answer, rubric) for i in request.items]
        items: Sequence[RawItem | StructuredItem] = request.items
        return [
            ScoringTask.reading(limits.encode(text, index, item.id, critique), trie, want_layers, critique)
            for index, (item, text) in enumerate(zip(items, texts, strict=True))
        ]

    def _item_score(
        self,
        item_id: str,
        labels: Sequence[str],
        values: Sequence[float] | None,
        result: LabelScores,
        prompt_tokens: int,
        request: ScoreRequest,
        layer_norm: bool,
    ) -> ItemScore:
        final = scoring.from_logprobs(labels, result.logprobs, values)
        dist = method_distribution(request.method, labels, values, result, layer_norm, self.runtime.layer_weights)
        layers = result.layer_logits_normed if layer_norm else result.layer_logits
        per_layer = None
        if request.return_layers and layers is not None:
            per_layer = [dict(zip(labels, scoring.softmax(row), strict=True)) for row in layers]
        return ItemScore(
            id=item_id,
            distribution=dict(zip(labels, dist.probs, strict=True)),
            expected_score=dist.expected_score,
            mode=dist.mode,
            std=dist.std,
            confidence=dist.confidence,
            label_mass=final.label_mass,
            prompt_tokens=prompt_tokens,
            logprobs=dict(zip(labels, result.logprobs, strict=True)) if request.return_logprobs else None,
            layers=per_layer,
            critique=result.critique.text if result.critique is not None else None,
            marker_found=result.critique.marker_found if result.critique is not None else None,
            critique_tokens=result.critique.tokens if result.critique is not None else None,
        )

"""The judge: request -> tasks -> queue -> label distributions -> response."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from service import pairwise, scoring
from service.batching import BatchQueue, collect
from service.config import Settings
from service.engines import Engine, LabelScores, build_engine, choose_engine
from service.errors import ErrorKind, JudgeError
from service.lager import LayerWeights
from service.metrics import Metrics
from service.model_store import resolve_model
from service.prompts import PromptBuilder
from service.schemas import (
    VERDICTS,
    CompareRequest,
    CompareResponse,
    ItemScore,
    PairVerdict,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
)

logger = logging.getLogger(__name__)


class Judge:
    """Owns the tokenizer, engine and queue of one loaded model."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine: Engine | None = None
        self.builder: PromptBuilder | None = None
        self.queue: BatchQueue | None = None
        self.layer_weights = LayerWeights.load(settings.layer_weights_file) if settings.layer_weights_file else None
        self.ready = False
        self.draining = False
        self.failed = False
        self.exit_code = 0

    @property
    def engine_kind(self) -> str:
        return choose_engine(self.settings.engine)

    async def load(self) -> None:
        """Resolve and load the model, warm it up, start the queue; mark ready."""
        try:
            started = time.monotonic()
            model_dir, tokenizer = await asyncio.to_thread(self._load_tokenizer)
            engine = build_engine(self.settings, model_dir, tokenizer)
            await engine.start()
            if self.layer_weights is not None and len(self.layer_weights.weights) != engine.num_layers:
                raise ValueError(
                    f"{self.settings.layer_weights_file} has {len(self.layer_weights.weights)} layer weights; "
                    f"the model needs {engine.num_layers} (one per layer entry but the final normed one)"
                )
            max_len = min(engine.max_model_len, self.settings.max_model_len or engine.max_model_len)
            self.builder = PromptBuilder(tokenizer, max_len, self.settings.max_items)
            wait_ms = self.settings.max_wait_ms
            if wait_ms is None:
                wait_ms = 0.0 if engine.concurrent_batches else 2.0
            self.queue = BatchQueue(
                engine.score,
                self.metrics,
                max_queue=self.settings.max_queue,
                max_batch_tokens=self.settings.max_batch_tokens or engine.preferred_batch_tokens,
                max_batch_size=self.settings.max_batch_size,
                max_wait_s=wait_ms / 1000,
                concurrent_batches=engine.concurrent_batches,
                shared_prefix_min=engine.shared_prefix_min,
            )
            self.queue.start()
            self.engine = engine
            self.metrics.model_info.info({"model": self.settings.model, "engine": self.engine_kind})
            self.ready = True
            self.metrics.ready.set(1)
            logger.info(
                "judge ready: model=%s engine=%s in %.1fs",
                self.settings.model,
                self.engine_kind,
                time.monotonic() - started,
            )
        except Exception:
            self.failed = True
            logger.exception("failed to load the judge model")

    def _load_tokenizer(self) -> tuple[Path, Any]:
        from transformers import AutoTokenizer

        model_dir = resolve_model(self.settings.model, self.settings.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        return model_dir, tokenizer

    @property
    def alive(self) -> bool:
        return not self.failed and (self.engine is None or self.engine.healthy)

    @property
    def accepting(self) -> bool:
        return self.ready and not self.draining and self.alive

    def _deadline(self, timeout_s: float | None) -> float:
        timeout = min(timeout_s or self.settings.request_timeout_s, self.settings.max_request_timeout_s)
        return time.monotonic() + timeout

    def _require_ready(self) -> tuple[PromptBuilder, BatchQueue]:
        if not self.accepting or self.builder is None or self.queue is None:
            raise JudgeError(ErrorKind.UNAVAILABLE, "the judge is not ready")
        return self.builder, self.queue

    async def compare(
        self, request: CompareRequest, timeout_s: float | None, disconnected: Callable[[], Awaitable[None]] | None
    ) -> CompareResponse:
        builder, queue = self._require_ready()
        deadline = self._deadline(timeout_s)
        tasks = await asyncio.to_thread(builder.build_pairs, request)
        results = await collect(queue.submit(tasks, deadline), deadline, disconnected)
        per_pair = 2 if request.swap else 1
        verdicts = []
        for index, pair in enumerate(request.pairs):
            chunk = results[index * per_pair : (index + 1) * per_pair]
            orders = {
                order: pairwise.in_ab_terms(scoring.softmax(result.logprobs), order)
                for order, result in zip(("ab", "ba"), chunk, strict=False)
            }
            mean = tuple(sum(column) / len(orders) for column in zip(*orders.values(), strict=True))
            if request.length_control is not None:
                mean = pairwise.length_controlled(
                    mean, len(pair.response_a), len(pair.response_b), request.length_control.k
                )
            tokens = sum(t.length for t in tasks[index * per_pair : (index + 1) * per_pair])
            p_a_wins, p_tie, p_b_wins, verdict = pairwise.summarise(mean)
            verdicts.append(
                PairVerdict(
                    id=pair.id,
                    distribution=dict(zip(VERDICTS, mean, strict=True)),
                    p_a_wins=p_a_wins,
                    p_tie=p_tie,
                    p_b_wins=p_b_wins,
                    verdict=verdict,
                    position_consistency=pairwise.consistency(orders["ab"], orders["ba"]) if request.swap else None,
                    orders={order: dict(zip(VERDICTS, probs, strict=True)) for order, probs in orders.items()},
                    prompt_tokens=tokens,
                )
            )
        self.metrics.items.labels(method="compare").inc(len(tasks))
        self.metrics.prompt_tokens.inc(sum(t.length for t in tasks))
        return CompareResponse(model=self.settings.model, results=verdicts)

    async def score(
        self, request: ScoreRequest, timeout_s: float | None, disconnected: Callable[[], Awaitable[None]] | None
    ) -> ScoreResponse:
        builder, queue = self._require_ready()
        if request.method == "lager_weighted" and self.layer_weights is None:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                "method 'lager_weighted' needs layer weights; the server has none (JUDGE_LAYER_WEIGHTS_FILE)",
            )
        want_layers = request.method != "final" or request.return_layers
        if want_layers and self.engine is not None and not self.engine.supports_layers:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"method {request.method!r} and return_layers need per-layer scores, "
                f"which this {self.engine_kind} engine does not provide ({self.engine.layers_unavailable})",
            )
        deadline = self._deadline(timeout_s)
        labels, tasks = await asyncio.to_thread(builder.build, request, want_layers)
        results = await collect(queue.submit(tasks, deadline), deadline, disconnected)
        values = scoring.label_values(labels, request.label_values)
        layer_norm = self.settings.lager_layer_norm if request.layer_norm is None else request.layer_norm
        scores = [
            self._item_score(item, labels, values, result, len(task.token_ids), request, layer_norm)
            for item, task, result in zip(request.items, tasks, results, strict=True)
        ]
        self.metrics.items.labels(method=request.method).inc(len(scores))
        self.metrics.prompt_tokens.inc(sum(t.length for t in tasks))
        for item_score in scores:
            if item_score.expected_score is not None:
                self.metrics.expected_score.observe(item_score.expected_score)
        return ScoreResponse(model=self.settings.model, method=request.method, results=scores)

    def _item_score(
        self,
        item: ScoreItem,
        labels: Sequence[str],
        values: Sequence[float] | None,
        result: LabelScores,
        prompt_tokens: int,
        request: ScoreRequest,
        layer_norm: bool,
    ) -> ItemScore:
        final = scoring.from_logprobs(labels, result.logprobs, values)
        layers = result.layer_logits_normed if layer_norm else result.layer_logits
        dist = final
        if request.method == "lager":
            assert layers is not None
            dist = scoring.distribution(labels, scoring.lager_logits(layers), values)
        elif request.method == "lager_weighted":
            assert self.layer_weights is not None
            # Weights apply to the layer variant they were fitted on.
            fitted = result.layer_logits_normed if self.layer_weights.layer_norm else result.layer_logits
            assert fitted is not None
            dist = scoring.distribution(labels, scoring.lager_logits(fitted, self.layer_weights.weights), values)
        per_layer = None
        if request.return_layers and layers is not None:
            per_layer = [dict(zip(labels, scoring.softmax(row), strict=True)) for row in layers]
        return ItemScore(
            id=item.id,
            distribution=dict(zip(labels, dist.probs, strict=True)),
            expected_score=dist.expected_score,
            mode=dist.mode,
            std=dist.std,
            confidence=dist.confidence,
            label_mass=final.label_mass,
            prompt_tokens=prompt_tokens,
            logprobs=dict(zip(labels, result.logprobs, strict=True)) if request.return_logprobs else None,
            layers=per_layer,
        )

    def begin_drain(self) -> None:
        """Stop admitting new requests (503); admitted work still completes."""
        self.draining = True
        self.metrics.ready.set(0)

    async def shutdown(self) -> None:
        self.begin_drain()
        if self.queue is not None:
            await self.queue.close(self.settings.shutdown_grace_s)
        if self.engine is not None:
            await self.engine.close()

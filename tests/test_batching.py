"""The batching queue on a real transformers engine with a tiny seeded model."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from service.batching import BatchQueue, collect
from service.engines.base import ScoringTask
from service.engines.transformers import TransformersEngine
from service.errors import ErrorKind, JudgeError
from service.metrics import Metrics

VOCAB = 64


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersEngine:
    engine = TransformersEngine(tiny_model_dir, "tiny", pad_token_id=0, device="cpu")
    asyncio.run(engine.start())
    return engine


def task(length: int, first: int = 1) -> ScoringTask:
    return ScoringTask(token_ids=tuple((first + i) % VOCAB for i in range(length)), label_ids=(1, 2, 3))


def make_queue(engine: TransformersEngine, metrics: Metrics, **limits: float) -> BatchQueue:
    options = {"max_queue": 64, "max_batch_tokens": 4096, "max_batch_size": 8, "max_wait_s": 0.0, **limits}
    return BatchQueue(engine.score, metrics, **options)  # type: ignore[arg-type]


def test_batched_equals_one_by_one(engine: TransformersEngine) -> None:
    tasks = [task(3), task(40, 5), task(17, 9), task(1)]
    batched = asyncio.run(engine.score(tasks))
    for t, got in zip(tasks, batched, strict=True):
        (alone,) = asyncio.run(engine.score([t]))
        assert got.logprobs == pytest.approx(alone.logprobs, abs=1e-5)


def test_batches_respect_token_budget_and_group_by_length(engine: TransformersEngine) -> None:
    async def run() -> list[list[int]]:
        seen: list[list[int]] = []

        async def recording(batch):
            seen.append([t.length for t in batch])
            return await engine.score(batch)

        queue = BatchQueue(recording, Metrics(), max_queue=64, max_batch_tokens=100, max_batch_size=4, max_wait_s=0)
        lengths = [50, 5, 48, 6, 49, 4, 7]
        futures = queue.submit([task(n) for n in lengths], time.monotonic() + 30)
        queue.start()
        await collect(futures, time.monotonic() + 30)
        await queue.close(1)
        return seen

    seen = asyncio.run(run())
    assert sorted(n for batch in seen for n in batch) == sorted([50, 5, 48, 6, 49, 4, 7])
    for batch in seen:
        assert max(batch) * len(batch) <= 100 or len(batch) == 1
        assert len(batch) <= 4
        # Short and long items are not mixed.
        assert max(batch) < 10 or min(batch) > 40


def test_a_shared_prefix_counts_once_against_the_budget(engine: TransformersEngine) -> None:
    prefix = tuple(range(1, 41))
    tasks = [ScoringTask(token_ids=(*prefix, 50 + i, 51, 52), label_ids=(1, 2)) for i in range(4)]

    async def run(shared_prefix_min: int) -> list[int]:
        sizes: list[int] = []

        async def recording(batch):
            sizes.append(len(batch))
            return await engine.score(batch)

        queue = BatchQueue(
            recording,
            Metrics(),
            max_queue=64,
            max_batch_tokens=100,
            max_batch_size=8,
            max_wait_s=0,
            shared_prefix_min=shared_prefix_min,
        )
        futures = queue.submit(tasks, time.monotonic() + 30)
        queue.start()
        await collect(futures, time.monotonic() + 30)
        await queue.close(1)
        return sizes

    # Padded, 4 x 43 = 172 tokens exceed 100; with the 40-token shared prefix counted once,
    # 40 + 4 x 3 = 52 fit.
    assert asyncio.run(run(0)) == [2, 2]
    assert asyncio.run(run(32)) == [4]


def test_admission_is_all_or_nothing(engine: TransformersEngine) -> None:
    async def run() -> None:
        queue = make_queue(engine, Metrics(), max_queue=4)
        futures = queue.submit([task(4)] * 3, time.monotonic() + 30)
        with pytest.raises(JudgeError) as refused:
            queue.submit([task(4)] * 2, time.monotonic() + 30)
        assert refused.value.kind is ErrorKind.QUEUE_FULL
        assert queue.depth == 3
        queue.start()
        await collect(futures, time.monotonic() + 30)
        assert queue.depth == 0
        await queue.close(1)

    asyncio.run(run())


def test_engine_failure_fails_only_its_batch(engine: TransformersEngine) -> None:
    async def run() -> None:
        metrics = Metrics()
        queue = make_queue(engine, metrics, max_batch_size=1)
        # A token id outside the vocabulary makes the real model raise.
        bad = ScoringTask(token_ids=(1, VOCAB + 5), label_ids=(1, 2))
        futures = queue.submit([task(3), bad, task(5)], time.monotonic() + 30)
        queue.start()
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
        assert isinstance(results[1], JudgeError) and results[1].kind is ErrorKind.INTERNAL
        # The loop keeps running.
        (after,) = await collect(queue.submit([task(6)], time.monotonic() + 30), time.monotonic() + 30)
        assert len(after.logprobs) == 3
        assert metrics.batch_failures._value.get() == 1
        await queue.close(1)

    asyncio.run(run())


def test_expired_and_cancelled_items_are_skipped_and_counted(engine: TransformersEngine) -> None:
    async def run() -> None:
        metrics = Metrics()
        queue = make_queue(engine, metrics)
        expired = queue.submit([task(3)], time.monotonic() - 1)
        cancelled = queue.submit([task(3)], time.monotonic() + 30)
        cancelled[0].cancel()
        live = queue.submit([task(3)], time.monotonic() + 30)
        queue.start()
        await collect(live, time.monotonic() + 30)
        with pytest.raises(JudgeError) as late:
            await expired[0]
        assert late.value.kind is ErrorKind.DEADLINE_EXCEEDED
        skipped = metrics.items_skipped
        assert skipped.labels(reason="deadline")._value.get() == 1
        assert skipped.labels(reason="cancelled")._value.get() == 1
        await queue.close(1)

    asyncio.run(run())


def test_close_drains_then_fails_with_503(engine: TransformersEngine) -> None:
    async def run() -> None:
        queue = make_queue(engine, Metrics())
        done = queue.submit([task(8)], time.monotonic() + 30)
        stranded = queue.submit([task(8)], time.monotonic() + 30)
        # Never started: nothing can finish within the grace period.
        await queue.close(0.05)
        for future in (*done, *stranded):
            with pytest.raises(JudgeError) as error:
                await future
            assert error.value.kind is ErrorKind.UNAVAILABLE
        with pytest.raises(JudgeError):
            queue.submit([task(1)], time.monotonic() + 30)

    asyncio.run(run())


def test_collect_times_out_with_504(engine: TransformersEngine) -> None:
    async def run() -> None:
        queue = make_queue(engine, Metrics())
        futures = queue.submit([task(8)], time.monotonic() + 30)
        with pytest.raises(JudgeError) as error:
            await collect(futures, time.monotonic())
        assert error.value.kind is ErrorKind.DEADLINE_EXCEEDED
        assert futures[0].cancelled()
        await queue.close(0)

    asyncio.run(run())


def test_shared_prefix_reuses_kv_cache_and_matches_one_by_one(engine: TransformersEngine) -> None:
    prefix = tuple(range(5, 45))  # 40 shared tokens
    tasks = [
        ScoringTask(token_ids=prefix + tuple(range(50, 50 + n)), label_ids=(1, 2, 3), want_layers=True)
        for n in (1, 6, 3, 12)
    ]
    before = engine.prefix_tokens_reused
    batched = asyncio.run(engine.score(tasks))
    assert engine.prefix_tokens_reused - before == 40 * 3
    for t, got in zip(tasks, batched, strict=True):
        (alone,) = asyncio.run(engine.score([t]))
        assert got.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
        for a, b in zip(got.layer_logits, alone.layer_logits, strict=True):
            assert a == pytest.approx(b, abs=1e-4)
    engine.prefix_reuse = False
    try:
        asyncio.run(engine.score(tasks))
        assert engine.prefix_tokens_reused - before == 40 * 3
    finally:
        engine.prefix_reuse = True


def test_short_shared_prefix_is_not_reused(engine: TransformersEngine) -> None:
    before = engine.prefix_tokens_reused
    asyncio.run(engine.score([task(20), task(25)]))  # same first 19 tokens: under the threshold
    assert engine.prefix_tokens_reused == before

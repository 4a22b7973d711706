"""The batching queue on a real transformers engine with a tiny seeded model."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.errors import ErrorKind, JudgeError
from service.core.tasks import ScoringTask
from service.engines.transformers.engine import TransformersEngine
from service.observability.metrics import Metrics
from service.scheduling.scheduler import Scheduler
from tests.conftest import scheduler_for, tiny_llama

VOCAB = 64


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), VOCAB)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersEngine:
    engine = TransformersEngine(tiny_model_dir, "tiny", pad_token_id=0, device="cpu")
    asyncio.run(engine.start())
    return engine


@contextlib.contextmanager
def without_prefix_cache(engine: TransformersEngine) -> Iterator[None]:
    """The engine with no cross-request prefix cache: padded batches, costed as such, and
    one-by-one results computed afresh."""
    cache, engine.prefix_cache = engine.prefix_cache, None
    try:
        yield
    finally:
        engine.prefix_cache = cache


def task(length: int, first: int = 1) -> ScoringTask:
    return ScoringTask(token_ids=tuple((first + i) % VOCAB for i in range(length)), label_ids=(1, 2, 3))


class Recording:
    """The real engine, with the lengths of every batch it ran recorded and, for fault
    injection, a token that makes its batch-cost function raise."""

    def __init__(self, engine: TransformersEngine, budget: int | None = None, poison: int | None = None) -> None:
        self.engine = engine
        self.pass_budget = budget or engine.pass_budget
        self.poison = poison
        self.seen: list[list[int]] = []

    def batch_cost(self, batch):
        if self.poison is not None and any(self.poison in t.token_ids for t in batch):
            raise ValueError("poisoned batch cost")
        return self.engine.batch_cost(batch)

    def batch_memory(self, batch, cost):
        return self.engine.batch_memory(batch, cost)

    async def score(self, batch, **kwargs):
        self.seen.append([t.length for t in batch])
        return await self.engine.score(batch, **kwargs)

    async def critique(self, batch, rows, **kwargs):
        return await self.engine.critique(batch, rows, **kwargs)


def make_queue(engine, metrics: Metrics, **limits) -> Scheduler:
    return scheduler_for(engine, metrics, **limits)


def later(seconds: float = 600) -> float:
    return time.monotonic() + seconds


def test_batched_equals_one_by_one(engine: TransformersEngine) -> None:
    tasks = [task(3), task(40, 5), task(17, 9), task(1)]
    batched = asyncio.run(engine.score(tasks))
    for t, got in zip(tasks, batched, strict=True):
        with without_prefix_cache(engine):
            (alone,) = asyncio.run(engine.score([t]))
        assert got.logprobs == pytest.approx(alone.logprobs, abs=1e-5)


def test_batches_respect_token_budget_and_group_by_length(engine: TransformersEngine) -> None:
    """Padded batches (the prefix cache would run short and long rows in passes of their own)."""
    recording = Recording(engine, budget=100)

    async def run() -> None:
        queue = make_queue(recording, Metrics(), max_batch_size=8)
        lengths = [50, 5, 48, 6, 49, 4, 7]
        # Distinct first tokens: no shared prefix discounts the cost.
        submission = queue.submit([task(n, first=n) for n in lengths], later())
        queue.start()
        await submission.wait(later())
        await queue.close(1)

    with without_prefix_cache(engine):
        asyncio.run(run())
    seen = recording.seen
    assert sorted(n for batch in seen for n in batch) == sorted([50, 5, 48, 6, 49, 4, 7])
    for batch in seen:
        assert max(batch) * len(batch) <= 100 or len(batch) == 1
        # Short and long items are not mixed.
        assert max(batch) < 10 or min(batch) > 40


def test_newer_items_overtake_older_ones_by_at_most_a_batch(engine: TransformersEngine) -> None:
    """Length grouping looks at the oldest ``max_batch_size`` items only: the long oldest
    item takes the nearest of the next one, not the later items nearer its length."""
    recording = Recording(engine, budget=10_000)

    async def run() -> None:
        queue = make_queue(recording, Metrics(), max_batch_size=2)
        lengths = [50, 5, 6, 40, 45, 7]
        submission = queue.submit([task(n, first=n) for n in lengths], later())
        queue.start()
        await submission.wait(later())
        await queue.close(1)

    asyncio.run(run())
    assert [sorted(batch) for batch in recording.seen] == [[5, 50], [6, 40], [7, 45]]


def test_a_shared_prefix_counts_once_against_the_budget(engine: TransformersEngine) -> None:
    prefix = tuple(range(1, 41))
    tasks = [ScoringTask(token_ids=(*prefix, 50 + i, 51, 52), label_ids=(1, 2)) for i in range(4)]

    def sizes(prefix_reuse: bool) -> list[int]:
        recording = Recording(engine, budget=100)

        async def run() -> None:
            queue = make_queue(recording, Metrics())
            submission = queue.submit(tasks, later())
            queue.start()
            await submission.wait(later())
            await queue.close(1)

        engine.prefix_reuse = prefix_reuse
        try:
            asyncio.run(run())
        finally:
            engine.prefix_reuse = True
        return [len(batch) for batch in recording.seen]

    # Padded, 4 x 43 = 172 tokens exceed 100; with the 40-token shared prefix counted once,
    # 40 + 4 x 3 = 52 fit.
    assert sizes(False) == [2, 2]
    assert sizes(True) == [4]


def test_admission_is_all_or_nothing(engine: TransformersEngine) -> None:
    async def run() -> None:
        queue = make_queue(engine, Metrics(), max_queue=4)
        submission = queue.submit([task(4)] * 3, later())
        with pytest.raises(JudgeError) as refused:
            queue.submit([task(4)] * 2, later())
        assert refused.value.kind is ErrorKind.QUEUE_FULL
        assert queue.depth == 3
        queue.start()
        await submission.wait(later())
        assert queue.depth == 0
        await queue.close(1)

    asyncio.run(run())


def test_engine_failure_fails_only_its_batch(engine: TransformersEngine) -> None:
    async def run() -> None:
        metrics = Metrics()
        queue = make_queue(engine, metrics, max_batch_size=1)
        # A token id outside the vocabulary makes the real model raise.
        bad = ScoringTask(token_ids=(1, VOCAB + 5), label_ids=(1, 2))
        futures = queue.submit([task(3), bad, task(5)], later()).futures
        queue.start()
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
        assert isinstance(results[1], JudgeError) and results[1].kind is ErrorKind.INTERNAL
        # The loop keeps running.
        (after,) = await queue.run([task(6)], later())
        assert len(after.logprobs) == 3
        assert metrics.batch_failures._value.get() == 1
        await queue.close(1)

    asyncio.run(run())


def test_a_fault_of_the_loop_itself_fails_one_item_and_the_loop_survives(engine: TransformersEngine) -> None:
    poison = 63
    recording = Recording(engine, poison=poison)

    async def run() -> None:
        metrics = Metrics()
        queue = make_queue(recording, metrics)
        queue.start()
        bad = ScoringTask(token_ids=(1, 2, poison), label_ids=(1, 2))
        futures = queue.submit([task(3), bad, task(4)], later()).futures
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert isinstance(results[1], JudgeError) and results[1].kind is ErrorKind.INTERNAL
        assert queue.running
        assert metrics.queue_faults._value.get() >= 1
        # Every item without the fault is answered, now and later.
        assert len(await queue.run([task(6), task(7)], later())) == 2
        await queue.close(1)

    asyncio.run(run())


def test_a_loop_that_ends_is_reported_and_refuses_work(engine: TransformersEngine) -> None:
    stopped: list[bool] = []

    async def run() -> None:
        queue = make_queue(engine, Metrics(), on_stopped=lambda: stopped.append(True))
        queue.start()
        waiting = queue.submit([task(5)], later()).futures
        assert queue._plain.loop_task is not None
        queue._plain.loop_task.cancel()
        with pytest.raises(JudgeError) as failed:
            await waiting[0]
        assert failed.value.kind is ErrorKind.UNAVAILABLE
        assert not queue.running and stopped == [True]
        with pytest.raises(JudgeError) as refused:
            queue.submit([task(5)], later())
        assert refused.value.kind is ErrorKind.UNAVAILABLE
        await queue.close(0)

    asyncio.run(run())


def test_a_cancelled_request_leaves_no_work_behind(engine: TransformersEngine) -> None:
    recording = Recording(engine)

    async def run() -> Metrics:
        metrics = Metrics()
        queue = make_queue(recording, metrics)
        request = asyncio.create_task(queue.run([task(5), task(6), task(7)], later()))
        while queue.depth < 3:
            await asyncio.sleep(0.01)
        # E.g. the server's shutdown timeout cancels the request's task while it waits.
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        queue.start()
        await queue.run([task(9)], later())
        await queue.close(1)
        return metrics

    metrics = asyncio.run(run())
    assert recording.seen == [[9]]
    assert metrics.items_skipped.labels(reason="cancelled")._value.get() == 3


def test_expired_and_cancelled_items_are_skipped_and_counted(engine: TransformersEngine) -> None:
    async def run() -> Metrics:
        metrics = Metrics()
        queue = make_queue(engine, metrics)
        expired = queue.submit([task(3)], time.monotonic() - 1)
        cancelled = queue.submit([task(3)], later())
        cancelled.abandon("cancelled")
        live = queue.submit([task(3)], later())
        queue.start()
        await live.wait(later())
        with pytest.raises(JudgeError) as late:
            await expired.futures[0]
        assert late.value.kind is ErrorKind.DEADLINE_EXCEEDED
        await queue.close(1)
        return metrics

    skipped = asyncio.run(run()).items_skipped
    assert skipped.labels(reason="deadline")._value.get() == 1
    assert skipped.labels(reason="cancelled")._value.get() == 1


def test_a_request_past_its_deadline_counts_its_items_as_deadline(engine: TransformersEngine) -> None:
    async def run() -> Metrics:
        metrics = Metrics()
        queue = make_queue(engine, metrics)
        with pytest.raises(JudgeError) as late:
            await queue.run([task(8), task(9)], time.monotonic() + 0.05)
        assert late.value.kind is ErrorKind.DEADLINE_EXCEEDED
        queue.start()  # the loop now finds the given-up items
        await queue.run([task(4)], later())
        await queue.close(1)
        return metrics

    skipped = asyncio.run(run()).items_skipped
    assert skipped.labels(reason="deadline")._value.get() == 2
    assert skipped.labels(reason="cancelled")._value.get() == 0


def test_close_drains_then_fails_with_503(engine: TransformersEngine) -> None:
    async def run() -> None:
        queue = make_queue(engine, Metrics())
        done = queue.submit([task(8)], later()).futures
        stranded = queue.submit([task(8)], later()).futures
        # Never started: nothing can finish within the grace period.
        await queue.close(0.05)
        for future in (*done, *stranded):
            with pytest.raises(JudgeError) as error:
                await future
            assert error.value.kind is ErrorKind.UNAVAILABLE
        with pytest.raises(JudgeError):
            queue.submit([task(1)], later())

    asyncio.run(run())


def test_wait_times_out_with_504(engine: TransformersEngine) -> None:
    async def run() -> None:
        queue = make_queue(engine, Metrics())
        submission = queue.submit([task(8)], later())
        with pytest.raises(JudgeError) as error:
            await submission.wait(time.monotonic())
        assert error.value.kind is ErrorKind.DEADLINE_EXCEEDED
        assert submission.futures[0].cancelled()
        await queue.close(0)

    asyncio.run(run())


def test_admission_refuses_what_cannot_meet_its_deadline(engine: TransformersEngine) -> None:
    async def run() -> None:
        metrics = Metrics()
        queue = make_queue(engine, metrics)
        # Measured: one batch of 100 prompt tokens in 1 s.
        queue.throughput.batch_started(0.0)
        queue.throughput.batch_finished(100, 0.0, 1.0)
        ahead = queue.submit([task(50)], later())  # 0.5 s of work ahead
        # 50 + 50 tokens: 1 s at the measured rate, 1.25 s with the safety margin, plus
        # one batch latency (1 s); in 0.5 s: refused.
        with pytest.raises(JudgeError) as refused:
            queue.submit([task(50)], time.monotonic() + 0.5)
        assert refused.value.kind is ErrorKind.OVERLOADED
        assert refused.value.retry_after_s == pytest.approx(1.75, abs=0.05)
        assert refused.value.details["predicted_s"] == pytest.approx(2.25)
        assert metrics.admission_refusals._value.get() == 1
        # Within the deadline: admitted.
        fits = queue.submit([task(50)], time.monotonic() + 3.0)
        queue.start()
        await ahead.wait(later())
        await fits.wait(later())
        # Nothing ahead: a request gets its chance when the prediction is near its deadline.
        assert len(await queue.run([task(60)], time.monotonic() + 5)) == 1
        assert queue.throughput.tokens_per_s is not None and queue.throughput.tokens_per_s != 100
        await queue.close(1)

    asyncio.run(run())


def test_a_request_that_alone_misses_its_deadline_by_far_is_refused(engine: TransformersEngine) -> None:
    async def run() -> None:
        queue = make_queue(engine, Metrics())
        # Measured: one batch of 100 prompt tokens in 1 s; nothing is admitted.
        queue.throughput.batch_started(0.0)
        queue.throughput.batch_finished(100, 0.0, 1.0)
        # 2,000 tokens alone: 25 s with the safety margin, plus one batch latency (1 s).
        with pytest.raises(JudgeError) as refused:
            queue.submit([task(2000)], time.monotonic() + 5)
        assert refused.value.kind is ErrorKind.OVERLOADED
        assert refused.value.details["predicted_s"] == pytest.approx(26.0)
        # Alone and near its deadline (2.25 s predicted, 1.5 s given): it gets its chance.
        admitted = queue.submit([task(100)], time.monotonic() + 1.5)
        assert queue.depth == 1
        await queue.close(0)
        with pytest.raises(JudgeError):
            await admitted.wait(later())

    asyncio.run(run())


def test_request_gauges_follow_waiting_and_running(engine: TransformersEngine) -> None:
    async def run() -> None:
        metrics = Metrics()
        queue = make_queue(engine, metrics)
        first, second = queue.submit([task(5)], later()), queue.submit([task(6), task(7)], later())
        assert metrics.requests_waiting._value.get() == 2
        assert metrics.requests_running._value.get() == 0
        queue.start()
        await first.wait(later())
        await second.wait(later())
        assert metrics.requests_waiting._value.get() == 0
        assert metrics.requests_running._value.get() == 0
        await queue.close(1)

    asyncio.run(run())


@pytest.mark.parametrize("kept", [False, True], ids=["within-batch", "prefix-cache"])
def test_shared_prefix_reuses_kv_cache_and_matches_one_by_one(engine: TransformersEngine, kept: bool) -> None:
    prefix = tuple(range(5, 45))  # 40 shared tokens
    tasks = [
        ScoringTask(token_ids=prefix + tuple(range(50, 50 + n)), label_ids=(1, 2, 3), want_layers=True)
        for n in (1, 6, 3, 12)
    ]
    cache = engine.prefix_cache if kept else None
    assert engine.prefix_cache is not None  # proven at load for Llama
    engine.prefix_cache.clear()
    with without_prefix_cache(engine):
        engine.prefix_cache = cache
        before = engine.prefix_tokens_reused
        batched = asyncio.run(engine.score(tasks))
        # The prefix runs once, for the 4 rows: 3 x 40 tokens not recomputed.
        assert engine.prefix_tokens_reused - before == 40 * 3
    for t, got in zip(tasks, batched, strict=True):
        engine.prefix_reuse = False
        try:
            (alone,) = asyncio.run(engine.score([t]))
        finally:
            engine.prefix_reuse = True
        assert got.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
        for a, b in zip(got.layer_logits, alone.layer_logits, strict=True):
            assert a == pytest.approx(b, abs=1e-4)
    assert engine.prefix_tokens_reused - before == 40 * 3


def test_short_shared_prefix_is_not_reused(engine: TransformersEngine) -> None:
    before = engine.prefix_tokens_reused
    asyncio.run(engine.score([task(20), task(25)]))  # same first 19 tokens: under the threshold
    assert engine.prefix_tokens_reused == before


def test_a_batch_that_fails_to_launch_fails_its_own_items_at_once(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault between taking a batch from the lane and starting its task: the batch's own
    items fail now (not at their deadline, minutes away), and the loop goes on."""
    from service.scheduling.submission import Submission

    real_start = Submission.start
    faults = [True]

    def failing_start(self: Submission) -> None:
        if faults:
            faults.pop()
            raise RuntimeError("launch fault")
        real_start(self)

    monkeypatch.setattr(Submission, "start", failing_start)

    async def run() -> Metrics:
        metrics = Metrics()
        queue = make_queue(engine, metrics)
        doomed = queue.submit([task(4), task(5)], later(600))
        queue.start()
        for future in doomed.futures:
            with pytest.raises(JudgeError) as failed:
                await asyncio.wait_for(future, 60)  # bounds a hang: the deadline is 600 s away
            assert failed.value.kind is ErrorKind.INTERNAL
        assert queue.running
        assert len(await queue.run([task(6)], later())) == 1
        await queue.close(1)
        return metrics

    assert asyncio.run(run()).queue_faults._value.get() == 1


def test_a_batch_cancelled_before_it_ran_fails_its_items_at_close(engine: TransformersEngine) -> None:
    """close() cancels a batch task that has not started yet: its coroutine never runs its
    own error handling, yet its items get 503 at once."""

    async def run() -> None:
        queue = make_queue(engine, Metrics())
        submission = queue.submit([task(4), task(6)], later(600))
        assert queue._step(queue._plain) == -math.inf  # the pass's task exists but has not run
        await queue.close(0)
        for future in submission.futures:
            assert future.done()
            with pytest.raises(JudgeError) as failed:
                await future
            assert failed.value.kind is ErrorKind.UNAVAILABLE

    asyncio.run(run())


def test_retry_after_is_capped_at_the_longest_deadline(engine: TransformersEngine) -> None:
    async def run() -> None:
        queue = make_queue(engine, Metrics(), max_retry_after_s=30.0)
        # Measured: 1 prompt token per second, so the work ahead drains in hours.
        queue.throughput.batch_started(0.0)
        queue.throughput.batch_finished(1, 0.0, 1.0)
        ahead = queue.submit([task(50)], later(3600))
        with pytest.raises(JudgeError) as refused:
            queue.submit([task(50)], time.monotonic() + 1)
        assert refused.value.kind is ErrorKind.OVERLOADED
        assert refused.value.details["predicted_s"] > 100  # what it predicts is still reported
        assert refused.value.retry_after_s == 30.0
        await queue.close(0)
        assert isinstance(ahead.futures[0].exception(), JudgeError)

    asyncio.run(run())

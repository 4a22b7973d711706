"""The batching queue between routes and the engine.

Admission (all-or-nothing, 429 when full) is separate from batch forming. Batches are
bounded by a padded-token budget and an item count, grouped by similar length around
the oldest waiting item, so long items are never starved. Every item has its own
future, created before it is enqueued; the loop only resolves futures that are not done
yet, and an engine failure fails exactly the futures of its batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.engines.base import EngineDead, LabelScores, ScoringTask, common_prefix
from service.errors import ErrorKind, JudgeError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

ScoreFn = Callable[[Sequence[ScoringTask]], Awaitable[Sequence[LabelScores]]]


class ClientGone(Exception):
    """The client disconnected before its results were ready."""


@dataclass(slots=True)
class _Entry:
    task: ScoringTask
    future: asyncio.Future[LabelScores]
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)


def _cancel_with(job: asyncio.Future[Any]) -> Callable[[asyncio.Future[LabelScores]], None]:
    def cancel(future: asyncio.Future[LabelScores]) -> None:
        if future.cancelled():
            job.cancel()

    return cancel


def _padded_tokens(entries: Sequence[_Entry]) -> int:
    return max(e.task.length for e in entries) * len(entries) if entries else 0


class BatchQueue:
    """Admits items, forms batches and runs them on the engine."""

    def __init__(
        self,
        score: ScoreFn,
        metrics: Metrics,
        *,
        max_queue: int,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_s: float,
        concurrent_batches: bool = False,
        shared_prefix_min: int = 0,
    ) -> None:
        self._score = score
        self._metrics = metrics
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.concurrent_batches = concurrent_batches
        # When > 0, the engine runs a prefix shared by the whole batch (at least this many
        # tokens) once, so the budget counts it once.
        self.shared_prefix_min = shared_prefix_min
        self._pending: list[_Entry] = []
        self._depth = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._loop_task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._seq = itertools.count()

    @property
    def depth(self) -> int:
        """Items admitted and not yet resolved (waiting or running)."""
        return self._depth

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="batch-queue")

    def submit(self, tasks: Sequence[ScoringTask], deadline: float) -> list[asyncio.Future[LabelScores]]:
        """Admit all ``tasks`` or none. ``deadline`` is a ``time.monotonic()`` instant."""
        if self._closing:
            raise JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down")
        if self._depth + len(tasks) > self.max_queue:
            raise JudgeError(
                ErrorKind.QUEUE_FULL,
                "the queue is full; retry later",
                {"queued": self._depth, "max_queue": self.max_queue, "requested": len(tasks)},
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[LabelScores]] = []
        for task in tasks:
            future: asyncio.Future[LabelScores] = loop.create_future()
            future.add_done_callback(self._on_done)
            futures.append(future)
            self._pending.append(_Entry(task, future, deadline))
        self._depth += len(tasks)
        self._metrics.queue_depth.set(self._depth)
        self._wake.set()
        return futures

    def _on_done(self, _: asyncio.Future[LabelScores]) -> None:
        self._depth -= 1
        self._metrics.queue_depth.set(self._depth)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self.max_wait_s > 0 and len(self._pending) < self.max_batch_size:
                await asyncio.sleep(self.max_wait_s)
            batch = self._take_batch()
            if not self._pending:
                self._wake.clear()
            if not batch:
                continue
            if self.concurrent_batches:
                job = asyncio.create_task(self._run_batch(batch))
                self._batches.add(job)
                job.add_done_callback(self._batches.discard)
            else:
                await self._run_batch(batch)

    def _drop_stale(self) -> None:
        now = time.monotonic()
        live = []
        for entry in self._pending:
            if entry.future.done():
                self._metrics.items_skipped.labels(reason="cancelled").inc()
            elif entry.deadline <= now:
                self._metrics.items_skipped.labels(reason="deadline").inc()
                entry.future.set_exception(JudgeError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded"))
            else:
                live.append(entry)
        self._pending = live

    def _take_batch(self) -> list[_Entry]:
        """Pick the oldest item and its nearest neighbours by length, within budget."""
        self._drop_stale()
        if not self._pending:
            return []
        ordered = sorted(self._pending, key=lambda e: e.task.length)
        anchor = min(range(len(ordered)), key=lambda i: ordered[i].enqueued)
        lo, hi = anchor, anchor + 1
        first = ordered[anchor].task
        target, shared = first.length, first.length - 1
        while hi - lo < self.max_batch_size:
            left = ordered[lo - 1] if lo > 0 else None
            right = ordered[hi] if hi < len(ordered) else None
            if left is None and right is None:
                break
            take_left = right is None or (left is not None and target - left.task.length <= right.task.length - target)
            candidate = ordered[lo - 1 : hi] if take_left else ordered[lo : hi + 1]
            neighbour = left if take_left else right
            assert neighbour is not None
            new = neighbour.task
            new_shared = min(shared, new.length - 1, common_prefix(first.token_ids, new.token_ids))
            if self._cost(candidate, new_shared) > self.max_batch_tokens:
                break
            lo, hi = (lo - 1, hi) if take_left else (lo, hi + 1)
            shared = new_shared
        batch = ordered[lo:hi]
        chosen = {id(e) for e in batch}
        self._pending = [e for e in self._pending if id(e) not in chosen]
        return batch

    def _cost(self, entries: Sequence[_Entry], shared: int) -> int:
        """Tokens the engine computes for a batch: padded, with a shared prefix counted once."""
        padded = _padded_tokens(entries)
        if self.shared_prefix_min and shared >= self.shared_prefix_min:
            return padded - (len(entries) - 1) * shared
        return padded

    async def _run_batch(self, batch: list[_Entry]) -> None:
        started = time.monotonic()
        for entry in batch:
            self._metrics.queue_wait.observe(started - entry.enqueued)
        self._metrics.batch_size.observe(len(batch))
        self._metrics.batch_tokens.observe(_padded_tokens(batch))
        if self.concurrent_batches:
            await self._run_items(batch, started)
            return
        try:
            results = await self._score([e.task for e in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            self._fail(batch, JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down"))
            raise
        except EngineDead:
            logger.error("engine is dead; failing batch of %d items", len(batch))
            self._metrics.batch_failures.inc()
            self._fail(batch, JudgeError(ErrorKind.UNAVAILABLE, "the judge engine is unavailable"))
            return
        except Exception:
            logger.exception("engine failed a batch of %d items", len(batch))
            self._metrics.batch_failures.inc()
            self._fail(batch, JudgeError(ErrorKind.INTERNAL, "internal error"))
            return
        finally:
            self._metrics.inference_duration.observe(time.monotonic() - started)
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    async def _run_items(self, batch: list[_Entry], started: float) -> None:
        """For engines that batch themselves: one engine call per item, each cancelled
        (and so aborted in the engine) when its own future is cancelled."""
        jobs = []
        for entry in batch:
            job = asyncio.ensure_future(self._score([entry.task]))
            entry.future.add_done_callback(_cancel_with(job))
            jobs.append(job)
        try:
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        except asyncio.CancelledError:
            for job in jobs:
                job.cancel()
            self._fail(batch, JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down"))
            raise
        finally:
            self._metrics.inference_duration.observe(time.monotonic() - started)
        for entry, outcome in zip(batch, outcomes, strict=True):
            if entry.future.done():
                continue
            if isinstance(outcome, EngineDead):
                entry.future.set_exception(JudgeError(ErrorKind.UNAVAILABLE, "the judge engine is unavailable"))
            elif isinstance(outcome, BaseException):
                if not isinstance(outcome, asyncio.CancelledError):
                    logger.error("engine failed an item", exc_info=outcome)
                    self._metrics.batch_failures.inc()
                entry.future.set_exception(JudgeError(ErrorKind.INTERNAL, "internal error"))
            elif len(outcome) != 1:
                entry.future.set_exception(JudgeError(ErrorKind.INTERNAL, "internal error"))
            else:
                entry.future.set_result(outcome[0])

    @staticmethod
    def _fail(entries: Sequence[_Entry], error: JudgeError) -> None:
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(error)

    async def close(self, grace_s: float) -> None:
        """Stop admitting, let admitted work finish within ``grace_s``, fail the rest with 503."""
        self._closing = True
        deadline = time.monotonic() + grace_s
        while self._depth > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._fail(self._pending, JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down"))
        self._pending = []
        tasks = [t for t in (self._loop_task, *self._batches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect(
    futures: Sequence[asyncio.Future[LabelScores]],
    deadline: float,
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> list[LabelScores]:
    """Wait for every future until ``deadline``; cancel them all on failure or disconnect."""
    gathered = asyncio.gather(*futures)
    # Its outcome is read below only on success; mark it retrieved for the other paths.
    gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
    watchers: set[asyncio.Future[Any]] = {gathered}
    watcher = asyncio.ensure_future(disconnected()) if disconnected else None
    if watcher is not None:
        watchers.add(watcher)
    try:
        done, _ = await asyncio.wait(
            watchers, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        if watcher is not None:
            watcher.cancel()
    if gathered in done:
        try:
            return list(gathered.result())
        finally:
            for future in futures:
                future.cancel()
    for future in futures:
        future.cancel()
    gathered.cancel()
    if watcher is not None and watcher in done:
        raise ClientGone
    raise JudgeError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded")

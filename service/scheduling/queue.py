"""The batching queue between the services and the engine.

Admission (all-or-nothing) is separate from batch forming. A request is refused with 429
when the queue is full, or when its predicted completion would miss its deadline (both
decided in ``service.scheduling.admission``). Batches are formed around the oldest waiting item from its nearest
neighbours by length among the oldest ``max_batch_size`` items, within the engine's own
budgets (``service.scheduling.batch_cost``: its compute cost, padded tokens for transformers and one
item for vLLM, and the bytes its passes hold) and an item count, so long items are never
starved. An item whose request gives it up leaves its lane at once. One
dispatch path: every batch runs as a task, at most ``engine.max_inflight_batches`` at
once.

Critique-mode items (a generation before the read) wait in a lane of their own, with
their own limit of batches at once (``engine.max_inflight_critiques``): a running
generation never holds the slot plain scores need, so a 1-token score never waits for a
512-token critique. Each running item has a ``CritiqueRow``, dropped when its request
gives it up: an engine that can leaves that row of its generation before the next step
and returns None for it, and the item is counted as skipped.

Every item has its own future, created before it is enqueued; the loop only resolves
futures that are not done yet, and a failure fails exactly the futures of its batch. The
loop survives faults of its own; if it ever ends unexpectedly, ``on_stopped`` says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from service.core.errors import ErrorKind, JudgeError, error_for
from service.core.tasks import CritiqueRow, LabelScores, ScoringTask
from service.observability.metrics import Metrics
from service.scheduling.admission import Throughput, overloaded, queue_full
from service.scheduling.batch_cost import BatchEngine, fits, padded_tokens
from service.scheduling.submission import ClientGone, Submission, _Entry

__all__ = ["BatchEngine", "BatchQueue", "ClientGone", "Submission"]

logger = logging.getLogger(__name__)

_Run = Callable[[Sequence[ScoringTask], Sequence[CritiqueRow]], Awaitable[Sequence[LabelScores | None]]]


@dataclass(slots=True, eq=False)
class _Lane:
    """One kind of work: its waiting items, the engine call that runs its batches, and
    its own limit of batches at once."""

    name: str
    run: _Run
    slots: asyncio.Semaphore
    pending: list[_Entry] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    loop_task: asyncio.Task[None] | None = None
    # Admission predicts each lane from its own work and rate: lanes run side by side, and
    # a generation's tokens come far slower than a prompt's.
    throughput: Throughput = field(default_factory=Throughput)
    # Tokens admitted and not yet resolved: prompts, and each critique's most it may add.
    work: int = 0


class BatchQueue:
    """Admits items, forms batches and runs them on the engine."""

    def __init__(
        self,
        engine: BatchEngine,
        metrics: Metrics,
        *,
        max_queue: int,
        max_batch_size: int,
        max_wait_s: float,
        on_stopped: Callable[[], None] | None = None,
        max_retry_after_s: float | None = None,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._on_stopped = on_stopped
        # The longest deadline a request may have: no Retry-After asks a client to wait longer.
        self.max_retry_after_s = max_retry_after_s
        self._depth = 0
        self._plain = _Lane(
            "batch-queue", lambda batch, _: engine.score(batch), asyncio.Semaphore(engine.max_inflight_batches)
        )
        self._critiques = _Lane("critique-queue", engine.critique, asyncio.Semaphore(engine.max_inflight_critiques))
        self._lanes = (self._plain, self._critiques)
        # Plain scores' throughput: the rate exported, and what the runtime's calibration seeds.
        self.throughput = self._plain.throughput
        self._closing = False
        # Each batch's task and items: a task cancelled before it ran (at close) fails them here.
        self._batches: dict[asyncio.Task[None], list[_Entry]] = {}

    @property
    def depth(self) -> int:
        """Items admitted and not yet resolved (waiting or running)."""
        return self._depth

    @property
    def _loop_task(self) -> asyncio.Task[None] | None:
        """The plain scores' batch loop."""
        return self._plain.loop_task

    @property
    def running(self) -> bool:
        """Whether every batch loop is alive."""
        return all(lane.loop_task is not None and not lane.loop_task.done() for lane in self._lanes)

    def start(self) -> None:
        for lane in self._lanes:
            lane.loop_task = asyncio.create_task(self._run(lane), name=lane.name)
            lane.loop_task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if self._closing:
            return
        error = None if task.cancelled() else task.exception()
        logger.critical("the batch loop %s ended unexpectedly", task.get_name(), exc_info=error)
        self._fail_pending(JudgeError(ErrorKind.UNAVAILABLE, "the judge is unavailable"))
        if self._on_stopped is not None:
            self._on_stopped()

    def _fail_pending(self, error: JudgeError) -> None:
        for lane in self._lanes:
            for entry in lane.pending:
                entry.waiting = False
            self._fail(lane.pending, error)
            lane.pending = []

    async def run(
        self,
        tasks: Sequence[ScoringTask],
        deadline: float,
        disconnected: Callable[[], Awaitable[None]] | None = None,
    ) -> list[LabelScores]:
        """Admit ``tasks`` (all or none) and wait for their results."""
        return await self.submit(tasks, deadline).wait(deadline, disconnected)

    def submit(self, tasks: Sequence[ScoringTask], deadline: float) -> Submission:
        """Admit all ``tasks`` or none. ``deadline`` is a ``time.monotonic()`` instant."""
        if self._closing or any(lane.loop_task is not None and lane.loop_task.done() for lane in self._lanes):
            raise JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down")
        if (full := queue_full(self._depth, len(tasks), self.max_queue)) is not None:
            raise full
        for lane in self._lanes:
            if tokens := sum(task.work for task in tasks if self._lane_of(task) is lane):
                late = overloaded(lane.throughput, lane.work, tokens, deadline, self.max_retry_after_s)
                if late is not None:
                    self._metrics.admission_refusals.inc()
                    raise late
        loop = asyncio.get_running_loop()
        submission = Submission()
        for task in tasks:
            entry = _Entry(task, loop.create_future(), deadline, submission)
            entry.future.add_done_callback(partial(self._on_done, entry))
            submission.add(entry)
        for entry in submission.entries:
            lane = self._lane_of(entry.task)
            lane.pending.append(entry)
            entry.waiting = True
            lane.work += entry.task.work
        self._depth += len(tasks)
        self._metrics.queue_depth.set(self._depth)
        self._metrics.requests_waiting.inc()
        for lane in self._lanes:
            if lane.pending:
                lane.wake.set()
        return submission

    def _lane_of(self, task: ScoringTask) -> _Lane:
        return self._critiques if task.critique is not None else self._plain

    def _on_done(self, entry: _Entry, _: asyncio.Future[LabelScores]) -> None:
        self._depth -= 1
        lane = self._lane_of(entry.task)
        lane.work -= entry.task.work
        if entry.waiting:
            # Given up while it waited (its client left, say): it leaves the lane now, not when
            # a batch slot frees, so submit-and-leave loops during a long pass hold nothing.
            lane.pending.remove(entry)
            self._skip(entry)
        self._metrics.queue_depth.set(self._depth)
        entry.submission._entry_done(self._metrics)

    async def _run(self, lane: _Lane) -> None:
        while True:
            await lane.wake.wait()
            await lane.slots.acquire()
            launched = False
            try:
                if self.max_wait_s > 0 and len(lane.pending) < self.max_batch_size:
                    await asyncio.sleep(self.max_wait_s)
                launched = self._launch_next(lane)
            except Exception:
                # A fault of the loop itself, outside any engine call: fail the oldest item
                # (so the loop always makes progress) and go on.
                logger.exception("the batch loop failed to form a batch")
                self._metrics.queue_faults.inc()
                self._fail_oldest(lane)
            finally:
                if not launched:
                    lane.slots.release()

    def _launch_next(self, lane: _Lane) -> bool:
        batch = self._take_batch(lane)
        if not lane.pending:
            lane.wake.clear()
        if not batch:
            return False
        try:
            for entry in batch:
                entry.submission._start(self._metrics)
            job = asyncio.create_task(self._run_batch(batch, lane))
        except Exception:
            # The batch left its lane and will never run: its own items fail now, not at their deadlines.
            logger.exception("a batch of %d items failed to launch", len(batch))
            self._metrics.queue_faults.inc()
            self._fail(batch, JudgeError(ErrorKind.INTERNAL, "internal error"))
            return False
        self._batches[job] = batch
        job.add_done_callback(partial(self._batch_ended, lane))
        return True

    def _batch_ended(self, lane: _Lane, job: asyncio.Task[None]) -> None:
        batch = self._batches.pop(job, [])
        if job.cancelled():
            self._fail(batch, JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down"))
        lane.slots.release()

    def _fail_oldest(self, lane: _Lane) -> None:
        live = [e for e in lane.pending if not e.future.done()]
        if live:
            oldest = min(live, key=lambda e: e.enqueued)
            lane.pending.remove(oldest)
            oldest.waiting = False
            self._fail([oldest], JudgeError(ErrorKind.INTERNAL, "internal error"))

    def _drop_stale(self, lane: _Lane) -> None:
        now = time.monotonic()
        live = []
        for entry in lane.pending:
            if entry.future.done() or entry.deadline <= now:
                entry.waiting = False
                self._skip(entry)
            else:
                live.append(entry)
        lane.pending = live

    def _skip(self, entry: _Entry) -> None:
        """Count an item given up before its result: by its request (counted under the
        request's reason), else by its deadline (it fails with ``deadline_exceeded``)."""
        if entry.future.done():
            reason = entry.abandoned or "cancelled"
        else:
            reason = "deadline"
            entry.future.set_exception(JudgeError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded"))
        self._metrics.items_skipped.labels(reason=reason).inc()

    def _take_batch(self, lane: _Lane) -> list[_Entry]:
        """Pick the oldest item and its nearest neighbours by length, within budget.
        Neighbours come from the oldest ``max_batch_size`` items only, so a newer item
        overtakes an older one by at most a batch: completion stays close to arrival
        order, which is what admission predicts."""
        self._drop_stale(lane)
        if not lane.pending:
            return []
        head = lane.pending[: self.max_batch_size]  # kept in admission order
        ordered = sorted(head, key=lambda e: e.task.length)
        anchor = min(range(len(ordered)), key=lambda i: ordered[i].enqueued)
        lo, hi = anchor, anchor + 1
        target = ordered[anchor].task.length
        while hi - lo < self.max_batch_size:
            left = ordered[lo - 1] if lo > 0 else None
            right = ordered[hi] if hi < len(ordered) else None
            if left is None and right is None:
                break
            take_left = right is None or (left is not None and target - left.task.length <= right.task.length - target)
            candidate = ordered[lo - 1 : hi] if take_left else ordered[lo : hi + 1]
            if not fits(self._engine, [e.task for e in candidate]):
                break
            lo, hi = (lo - 1, hi) if take_left else (lo, hi + 1)
        batch = ordered[lo:hi]
        chosen = {id(e) for e in batch}
        for entry in batch:
            entry.waiting = False
        lane.pending = [e for e in lane.pending if id(e) not in chosen]
        return batch

    async def _run_batch(self, batch: list[_Entry], lane: _Lane) -> None:
        started = time.monotonic()
        lane.throughput.batch_started(started)
        rows = [CritiqueRow(entry.deadline) for entry in batch]
        job = asyncio.current_task()
        finished = False

        def given_up(row: CritiqueRow, _: asyncio.Future[LabelScores]) -> None:
            # The item's row leaves a running generation before its next step (transformers).
            # When every item of the batch has been given up, stop waiting for it (vLLM aborts
            # the engine requests; a transformers pass runs out in its thread, unread).
            row.drop()
            if not finished and job is not None and all(e.future.done() for e in batch):
                job.cancel()

        for entry, row in zip(batch, rows, strict=True):
            entry.future.add_done_callback(partial(given_up, row))
        completed = 0
        try:
            for entry in batch:
                self._metrics.queue_wait.observe(started - entry.enqueued)
            self._metrics.batch_size.observe(len(batch))
            self._metrics.batch_tokens.observe(padded_tokens([e.task for e in batch]))
            results = await lane.run([e.task for e in batch], rows)
            if len(results) != len(batch):
                raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:
            finished = True
            # The tokens its generation had produced (what a transformers engine reports).
            self._metrics.generated_tokens.inc(sum(row.tokens for row in rows))
            error = error_for(exc)
            if not isinstance(exc, asyncio.CancelledError):
                logger.error("a batch of %d items failed", len(batch), exc_info=exc)
                self._metrics.batch_failures.inc()
            if lane is self._critiques:
                # Critiques given up during their generation, whatever then ended the batch.
                for entry in batch:
                    if entry.future.done():
                        self._skip(entry)
            self._fail(batch, error)
            if not isinstance(exc, Exception):
                raise
        else:
            finished = True
            completed = self._resolve(batch, rows, results)
        finally:
            now = time.monotonic()
            self._metrics.inference_duration.observe(now - started)
            lane.throughput.batch_finished(completed, started, now)
            rate = lane.throughput.tokens_per_s
            if rate is not None and lane is self._plain:
                self._metrics.throughput.set(rate)

    def _resolve(self, batch: list[_Entry], rows: list[CritiqueRow], results: Sequence[LabelScores | None]) -> int:
        """Hand each item its result; an item whose row the engine dropped (None) is counted
        as skipped, with the tokens generated for it. Returns the tokens completed."""
        completed = 0
        for entry, row, result in zip(batch, rows, results, strict=True):
            if result is None:
                self._metrics.generated_tokens.inc(row.tokens)
                self._skip(entry)
                continue
            completed += entry.task.work
            if result.critique is not None:
                self._metrics.critiqued(result.critique.tokens)
            if not entry.future.done():
                entry.future.set_result(result)
        return completed

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
        self._fail_pending(JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down"))
        tasks = [t for t in (*(lane.loop_task for lane in self._lanes), *self._batches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

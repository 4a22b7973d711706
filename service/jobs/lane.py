"""The batch lane: batch work's own low-priority queue in front of the engine.

Online requests keep the queue (``service.scheduling.queue``) to themselves: its admission, depth,
deadlines and gauges never see batch work. The lane runs one engine pass at a time and
starts one only while the queue holds no online work and none came within
``ONLINE_GAP_S`` (a client that gets its answer and asks again goes first), so an online
request that arrives waits behind at most the one lane pass already running. The engine
grants passes in arrival order (its fair lock), so no second lane pass can slip in ahead
of it.

While online traffic is recent (``RECENT_ONLINE_S``), lane passes shrink to ``busy_items``
items and an eighth of the engine's budget (on transformers a pass cannot be interrupted,
so its size is what an online request may wait for), and the lane rests after each pass
so that it takes at most ``BUSY_SHARE`` of the engine's time: a client with pauses
between its requests does not meet a lane pass at each one. Under online traffic that
never pauses, the lane still runs a pass once its rest is over and it has deferred
``LANE_STARVE_S``, so batches progress.

An engine that schedules its own requests by priority (vLLM: ``engine.background_slots`` >
0) orders the lane's work behind online work itself: the lane then keeps up to that many
items in the engine at once as background requests, without waiting for online work to
pause, and up to ``busy_items`` while online work is recent (they share its steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from service.core.errors import ErrorKind, JudgeError, error_for
from service.core.tasks import CritiqueRow, LabelScores, ScoringTask
from service.scheduling.batch_cost import fits
from service.scheduling.queue import BatchEngine
from service.serving.runtime import Runtime

logger = logging.getLogger(__name__)

# Online work seen this recently keeps lane passes small.
RECENT_ONLINE_S = 2.0
# How often the lane looks again while online work holds the engine.
YIELD_POLL_S = 0.005
# Lines that keep arriving (a chunk's lines, each prepared in turn) are gathered for a pass
# until none came for this long or a full pass waits.
GATHER_S = 0.02
# After online work ends, the lane waits this long for more before it takes the engine.
ONLINE_GAP_S = 0.05
# The longest the lane defers to online work, its rest over: then it runs one pass, online work or not.
LANE_STARVE_S = 1.0
# The most of the engine's time the lane's passes take while online work is recent.
BUSY_SHARE = 0.25
# While online work is recent, a lane pass costs at most this part of the engine's budget.
BUSY_BUDGET_PART = 8


@dataclass(eq=False)
class _Entry:
    task: ScoringTask
    future: asyncio.Future[LabelScores]
    enqueued: float = field(default_factory=time.monotonic)


def _shutting_down() -> JudgeError:
    return JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down")


def _fail(entries: Sequence[_Entry], error: BaseException) -> None:
    """Fail every entry not answered yet with ``error``."""
    for entry in entries:
        if not entry.future.done():
            entry.future.set_exception(error)


class BatchLane:
    """Batch work's queue: runs passes only while no online work waits or runs."""

    def __init__(
        self,
        engine: BatchEngine,
        online_depth: Callable[[], int],
        *,
        max_batch_size: int,
        busy_items: int,
        on_depth: Callable[[int], None] = lambda _: None,
        on_pass: Callable[[int], None] = lambda _: None,
    ) -> None:
        self._engine = engine
        self._on_pass = on_pass
        self._online_depth = online_depth
        self.max_batch_size = max_batch_size
        self.busy_items = max(1, busy_items)
        self._on_depth = on_depth
        self._pending: list[_Entry] = []
        self._wake = asyncio.Event()
        self._online_seen = float("-inf")
        self._arrived = float("-inf")
        # While online work is recent, the lane starts no pass before this (its share's rest).
        self._rest_until = float("-inf")
        self._task: asyncio.Task[None] | None = None
        # Engines that schedule background work themselves: the lane's passes in the engine.
        self._slots = engine.background_slots
        self._passes: set[asyncio.Task[None]] = set()
        self._in_engine = 0
        self._pass_ended = asyncio.Event()

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-lane")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for running in self._passes:
            running.cancel()
        await asyncio.gather(*self._passes, return_exceptions=True)
        _fail(self._pending, _shutting_down())
        self._pending = []

    async def run(self, tasks: Sequence[ScoringTask]) -> list[LabelScores]:
        """Every task's result, in order; cancelling the caller gives its tasks up."""
        if self._task is None or self._task.done():
            raise JudgeError(ErrorKind.UNAVAILABLE, "the batch lane is not running")
        loop = asyncio.get_running_loop()
        entries = [_Entry(task, loop.create_future()) for task in tasks]
        self._pending.extend(entries)
        self._arrived = time.monotonic()
        self._on_depth(len(self._pending))
        self._wake.set()
        try:
            return list(await asyncio.gather(*(e.future for e in entries)))
        finally:
            for entry in entries:
                entry.future.cancel()

    def _online_busy(self) -> bool:
        if self._online_depth() > 0:
            self._online_seen = time.monotonic()
            return True
        return False

    def _online_recent(self) -> bool:
        return time.monotonic() - self._online_seen < RECENT_ONLINE_S

    async def _await_turn(self) -> None:
        """Until the lane's rest is over (while online work is recent), and then until no
        online work waits and none came within ``ONLINE_GAP_S``, or the lane has deferred
        for ``LANE_STARVE_S``."""
        deferred_since = time.monotonic()
        while True:
            busy = self._online_busy()
            now = time.monotonic()
            if now < self._rest_until and self._online_recent():
                await asyncio.sleep(YIELD_POLL_S)
                continue
            if now - deferred_since >= LANE_STARVE_S:
                return
            if not busy and now - self._online_seen >= ONLINE_GAP_S:
                return
            await asyncio.sleep(YIELD_POLL_S)

    async def _await_slot(self) -> None:
        """Until the engine holds fewer of the lane's items than it may: ``background_slots``,
        or ``busy_items`` while online work is recent."""
        while True:
            self._online_busy()
            if self._in_engine < (min(self.busy_items, self._slots) if self._online_recent() else self._slots):
                return
            self._pass_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pass_ended.wait(), RECENT_ONLINE_S)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            while len(self._pending) < self.max_batch_size and time.monotonic() - self._arrived < GATHER_S:
                await asyncio.sleep(GATHER_S)
            if self._slots:
                await self._await_slot()
            else:
                await self._await_turn()
            batch = self._take()
            if not self._pending:
                self._wake.clear()
            self._on_depth(len(self._pending))
            if not batch:
                continue
            if not self._slots:
                await self._run(batch)
                continue
            self._in_engine += len(batch)
            running = asyncio.create_task(self._run(batch), name="batch-lane-pass")
            self._passes.add(running)
            running.add_done_callback(partial(self._ended, len(batch)))

    def _ended(self, items: int, running: asyncio.Task[None]) -> None:
        self._passes.discard(running)
        self._in_engine -= items
        self._pass_ended.set()

    def _take(self) -> list[_Entry]:
        """The oldest live item and its nearest by length among the next items, of its kind
        (critique or not), within the engine's budgets and the pass size now allowed (the
        oldest item runs even where it alone is over the smaller budget)."""
        self._pending = [e for e in self._pending if not e.future.done()]
        if not self._pending:
            return []
        budget = self._engine.batch_budget
        size = self.max_batch_size
        if self._online_recent():
            size = min(self.busy_items, size)
            budget = max(1, budget // BUSY_BUDGET_PART)
        head = self._pending[0]
        kind = head.task.critique is not None
        window = [e for e in self._pending[: 4 * self.max_batch_size] if (e.task.critique is not None) == kind]
        window.sort(key=lambda e: abs(e.task.length - head.task.length))
        batch = [head]
        for entry in window:
            if len(batch) >= size:
                break
            if entry is head:
                continue
            # Nearest first: the first that does not fit ends the pass, as in the queue (each
            # try prices the whole pass, on the prefix cache's plan).
            if not fits(self._engine, [e.task for e in (*batch, entry)], budget):
                break
            batch.append(entry)
        chosen = {id(e) for e in batch}
        self._pending = [e for e in self._pending if id(e) not in chosen]
        return batch

    async def _run(self, batch: list[_Entry]) -> None:
        tasks = [e.task for e in batch]
        started = time.monotonic()
        try:
            if batch[0].task.critique is not None:
                # No deadline inside a batch: the worker gives a line up when its window ends.
                rows = [CritiqueRow(float("inf")) for _ in batch]
                results: Sequence[LabelScores | None] = await self._engine.critique(tasks, rows, background=True)
            else:
                results = await self._engine.score(tasks, background=True)
        except asyncio.CancelledError:
            # The lane is closing: its callers hear why rather than wait.
            _fail(batch, _shutting_down())
            raise
        except Exception as exc:
            logger.error("a batch-lane pass of %d items failed", len(batch), exc_info=exc)
            _fail(batch, error_for(exc))
            return
        finally:
            ended = time.monotonic()
            self._rest_until = ended + (ended - started) * (1 / BUSY_SHARE - 1)
        self._on_pass(len(batch))
        for entry, result in zip(batch, results, strict=True):
            if entry.future.done():
                continue
            if result is None:
                entry.future.set_exception(JudgeError(ErrorKind.UNAVAILABLE, "the critique was given up"))
            else:
                entry.future.set_result(result)


class LaneRuntime(Runtime):
    """The runtime as the serving code sees it inside a batch: everything is the real
    runtime's (``__getattr__``), but ``run`` sends tasks to the batch lane, with no
    admission and no per-request deadline (the batch's completion window applies)."""

    def __init__(self, runtime: Runtime, lane: BatchLane) -> None:  # no super(): a view, not a second runtime
        self._inner = runtime
        self._lane = lane

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def run(
        self, tasks: Sequence[ScoringTask], deadline: float, disconnected: Callable[[], Awaitable[None]] | None
    ) -> list[LabelScores]:
        if not self._inner.lifecycle.accepting:
            raise JudgeError(ErrorKind.UNAVAILABLE, "the judge is not ready")
        return await self._lane.run(tasks)

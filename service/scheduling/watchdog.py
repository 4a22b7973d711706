"""The watchdog: notices an engine that stopped making progress.

Liveness flags cannot see a pass that never returns (a transformers pass stuck in its
thread, a vLLM engine process that stopped answering). So every engine call the queue
makes (a pass) goes through ``WatchedEngine``, which records when it began and the tokens
it carries, and feeds its own copy of the admission model (``service.scheduling.admission``) with
what completes. Every ``CHECK_PERIOD_S`` the watchdog compares, per lane (plain scores,
critiques), the time since the lane last made progress (a pass ended, or its oldest
running pass began, whichever is later) with its limit::

    limit = JUDGE_STALL_MULTIPLE x predicted + JUDGE_STALL_FLOOR_S
    predicted = tokens running / measured rate + mean batch latency

(the admission model's completion time for the work running, without its safety
factor). A critique lane is never stalled before its rows' latest deadline plus the
floor: a generation stops each row at its deadline, and its tokens come at a rate that
varies with where each stops. Past the limit the engine is stalled for good: ``/health``
turns 503, and every engine call, running or still to come, gives up at once with 503
(``EngineDead``), so no waiting request learns it from its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.core.errors import EngineDead
from service.core.tasks import CritiqueRow, LabelScores, ScoringTask
from service.scheduling.admission import Throughput

logger = logging.getLogger(__name__)

# How often the watchdog looks: the documented bound on noticing a stall adds this.
CHECK_PERIOD_S = 1.0

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Stall:
    """Why the engine was declared stalled: the lane, how long it had gone without
    progress, its limit and the prediction the limit came from (None: from a deadline)."""

    lane: str
    stalled_s: float
    limit_s: float
    predicted_s: float | None

    @property
    def details(self) -> dict[str, Any]:
        predicted = None if self.predicted_s is None else round(self.predicted_s, 3)
        return {
            "lane": self.lane,
            "stalled_s": round(self.stalled_s, 3),
            "limit_s": round(self.limit_s, 3),
            "predicted_s": predicted,
        }


@dataclass(slots=True, eq=False)
class _Pass:
    started: float
    tokens: int
    # The latest deadline of a critique pass's rows (None for plain passes).
    deadline: float | None


@dataclass(slots=True, eq=False)
class _LaneWatch:
    """The passes one lane has running, its last progress and its measured rate."""

    name: str
    throughput: Throughput = field(default_factory=Throughput)
    running: set[_Pass] = field(default_factory=set)
    last_end: float | None = None

    def began(self, record: _Pass) -> None:
        self.running.add(record)
        self.throughput.batch_started(record.started)

    def ended(self, record: _Pass, completed: int) -> None:
        now = time.monotonic()
        self.running.discard(record)
        self.last_end = now
        self.throughput.batch_finished(completed, record.started, now)

    def overdue(self, now: float, multiple: float, floor_s: float) -> Stall | None:
        if not self.running:
            return None
        oldest = min(record.started for record in self.running)
        since = max(oldest, self.last_end or oldest)
        predicted = self.throughput.completion_s(sum(record.tokens for record in self.running), 1.0)
        limits = [] if predicted is None else [multiple * predicted + floor_s]
        # A generation stops each row at its deadline: never stalled before the latest.
        deadlines = [record.deadline for record in self.running if record.deadline is not None]
        if deadlines:
            limits.append(max(deadlines) - since + floor_s)
        if not limits:
            return None  # nothing measured and no deadline: nothing to judge by
        limit = max(limits)
        if now - since <= limit:
            return None
        return Stall(self.name, now - since, limit, predicted)


class Watchdog:
    """Declares the engine stalled when a lane goes far past its predicted time."""

    def __init__(self, multiple: float, floor_s: float, on_stall: Callable[[Stall], None] | None = None) -> None:
        self.multiple = multiple
        self.floor_s = floor_s
        self.stall: Stall | None = None
        self.plain = _LaneWatch("scores")
        self.critiques = _LaneWatch("critiques")
        self._on_stall = on_stall
        self._stalled = asyncio.Event()

    def check(self, now: float | None = None) -> Stall | None:
        """Look once; the first stall found is kept for good."""
        if self.stall is None:
            now = time.monotonic() if now is None else now
            for lane in (self.plain, self.critiques):
                if (stall := lane.overdue(now, self.multiple, self.floor_s)) is not None:
                    self._declare(stall)
                    break
        return self.stall

    def _declare(self, stall: Stall) -> None:
        self.stall = stall
        self._stalled.set()
        logger.critical(
            "the engine stalled: the %s lane made no progress for %.1fs (limit %.1fs)",
            stall.lane,
            stall.stalled_s,
            stall.limit_s,
        )
        if self._on_stall is not None:
            self._on_stall(stall)

    async def run(self) -> None:
        """Look every ``CHECK_PERIOD_S`` until a stall is found."""
        while self.check() is None:
            await asyncio.sleep(CHECK_PERIOD_S)

    async def watch(
        self, lane: _LaneWatch, record: _Pass, call: Callable[[], Awaitable[_R]], completed: Callable[[_R], int]
    ) -> _R:
        """Run one engine call as a recorded pass; give it up with ``EngineDead`` on a stall."""
        if self.stall is not None:
            raise EngineDead("the judge engine stalled")
        work = asyncio.ensure_future(call())
        # Its outcome is read below, unless the call is given up: mark it retrieved.
        work.add_done_callback(lambda f: f.cancelled() or f.exception())
        stalled = asyncio.ensure_future(self._stalled.wait())
        lane.began(record)
        done = 0
        try:
            try:
                await asyncio.wait({work, stalled}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # The engine may hold its slot until its pass really ends (a transformers
                # pass in its thread): wait for that, but not past a stall.
                work.cancel()
                await asyncio.wait({work, stalled}, return_when=asyncio.FIRST_COMPLETED)
                raise
            if not work.done():
                # vLLM aborts the call's engine requests; a pass stuck in its thread is left to it.
                work.cancel()
                raise EngineDead("the judge engine stalled")
            result = work.result()
            done = completed(result)
            return result
        finally:
            stalled.cancel()
            lane.ended(record, done)


class WatchedEngine:
    """The engine as the queue sees it: every call is a pass the watchdog watches."""

    def __init__(self, engine: Any, watchdog: Watchdog) -> None:
        self._engine = engine
        self._watchdog = watchdog
        # Fixed once the engine has started, which is when the queue is built.
        self.batch_budget: int = engine.batch_budget
        self.max_inflight_batches: int = engine.max_inflight_batches
        self.max_inflight_critiques: int = engine.max_inflight_critiques
        self.background_slots: int = engine.background_slots

    def __getattr__(self, name: str) -> Any:
        # Anything else the queue may read of its engine comes from the engine itself.
        return getattr(self._engine, name)

    def batch_cost(self, batch: Sequence[ScoringTask]) -> int:
        return int(self._engine.batch_cost(batch))

    async def score(self, batch: Sequence[ScoringTask], *, background: bool = False) -> Sequence[LabelScores]:
        record = _Pass(time.monotonic(), sum(task.work for task in batch), None)
        tokens = record.tokens
        return await self._watchdog.watch(
            self._watchdog.plain, record, lambda: self._engine.score(batch, background=background), lambda _: tokens
        )

    async def critique(
        self, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow], *, background: bool = False
    ) -> Sequence[LabelScores | None]:
        deadline = max((row.deadline for row in rows), default=None)
        record = _Pass(time.monotonic(), sum(task.work for task in batch), deadline)

        def completed(results: Sequence[LabelScores | None]) -> int:
            return sum(task.work for task, result in zip(batch, results, strict=False) if result is not None)

        def call() -> Awaitable[Sequence[LabelScores | None]]:
            return self._engine.critique(batch, rows, background=background)

        return await self._watchdog.watch(self._watchdog.critiques, record, call, completed)

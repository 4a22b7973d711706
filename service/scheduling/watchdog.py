"""The watchdog: notices an engine that stopped making progress.

Liveness flags cannot see a pass that never returns (a transformers pass stuck in its
thread, a vLLM engine process that stopped answering). So every engine call the scheduler
makes (a pass, online or batch) goes through ``Watchdog.score`` or ``Watchdog.critique``,
which record when it began and the tokens it carries, and feed the watchdog's own copy of
the admission model (``service.scheduling.admission``) with what completes. A call counts
as running until the engine answers it: a call whose request gave it up and which ended
without the engine's answer (vLLM aborts it; a transformers pass is waited out in its
thread) makes no progress, and the watchdog then sends the engine a tiny pass of its own
(``Engine.probe``), which must be answered. An idle engine gets such a probe too, after
``JUDGE_STALL_FLOOR_S`` without an answer, so a stopped engine is noticed whether or not
anyone waits. Every ``CHECK_PERIOD_S`` the watchdog compares, per lane (plain scores,
critiques), the time since the lane last made progress (an answered call ended, or its
oldest running call began, whichever is later) with its limit::

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
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.core.errors import EngineDead
from service.core.tasks import CritiqueRow, LabelScores, ScoringTask
from service.engines.base import Engine
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

    def ended(self, record: _Pass, completed: int, answered: bool = True) -> None:
        """A call ended; only one the engine answered (a result or its own error) is progress."""
        now = time.monotonic()
        self.running.discard(record)
        if answered:
            self.last_end = now
        self.throughput.batch_finished(completed, record.started, now)

    def overdue(self, now: float, multiple: float, floor_s: float) -> Stall | None:
        if not self.running:
            return None
        oldest = min(record.started for record in self.running)
        since = max(oldest, self.last_end or oldest)
        predicted = self.throughput.completion_s(sum(record.tokens for record in self.running), 1.0)
        limits = [] if predicted is None else [multiple * predicted + floor_s]
        # A generation stops each row at its deadline: never stalled before the latest (batch
        # work's rows have none: their limit is the prediction's).
        deadlines = [r.deadline for r in self.running if r.deadline is not None and math.isfinite(r.deadline)]
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
        # A call ended without the engine's answer: a probe must be answered before the
        # engine counts as stepping again.
        self._unanswered = False
        self._probing: asyncio.Task[None] | None = None
        self._created = time.monotonic()
        self._look = asyncio.Event()

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

    async def run(self, engine: Engine) -> None:
        """Look every ``CHECK_PERIOD_S`` (at once after an unanswered call) until a stall is
        found, probing ``engine`` when it owes an answer or has been idle for the floor."""
        try:
            while self.check() is None:
                if self._probe_due(time.monotonic()):
                    self._unanswered = False
                    self._probing = asyncio.create_task(self._probe(engine), name="watchdog-probe")
                self._look.clear()
                try:
                    await asyncio.wait_for(self._look.wait(), CHECK_PERIOD_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            if self._probing is not None:
                self._probing.cancel()

    def _probe_due(self, now: float) -> bool:
        if self._probing is not None and not self._probing.done():
            return False
        if self._unanswered:
            return True
        lanes = (self.plain, self.critiques)
        if any(lane.running for lane in lanes):
            return False
        last = max((lane.last_end for lane in lanes if lane.last_end is not None), default=self._created)
        return now - last >= self.floor_s

    async def _probe(self, engine: Engine) -> None:
        try:
            await self.watch(self.plain, _Pass(time.monotonic(), 1, None), engine.probe, lambda _: 0)
        except EngineDead:
            pass  # the stall is declared and logged
        except Exception as exc:  # the engine answered with an error: it steps, and says why elsewhere
            logger.warning("the watchdog's probe failed: %s", exc)

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
        answered = False
        try:
            try:
                await asyncio.wait({work, stalled}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # Given up: the call still runs until the engine lets it go (a transformers
                # pass ends in its thread; vLLM aborts its requests), but not past a stall.
                work.cancel()
                await asyncio.wait({work, stalled}, return_when=asyncio.FIRST_COMPLETED)
                raise
            if not work.done():
                # vLLM aborts the call's engine requests; a pass stuck in its thread is left to it.
                work.cancel()
                raise EngineDead("the judge engine stalled")
            answered = not work.cancelled()
            result = work.result()
            done = completed(result)
            return result
        finally:
            stalled.cancel()
            lane.ended(record, done, answered)
            if not answered and self.stall is None:
                # Whether the engine still steps is unknown until it answers something.
                self._unanswered = True
                self._look.set()

    async def score(
        self, engine: Engine, batch: Sequence[ScoringTask], *, background: bool = False
    ) -> Sequence[LabelScores]:
        """``engine.score`` as a recorded pass of the plain lane."""
        record = _Pass(time.monotonic(), sum(task.work for task in batch), None)
        tokens = record.tokens
        return await self.watch(
            self.plain, record, lambda: engine.score(batch, background=background), lambda _: tokens
        )

    async def critique(
        self, engine: Engine, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow], *, background: bool = False
    ) -> Sequence[LabelScores | None]:
        """``engine.critique`` as a recorded pass of the critique lane."""
        deadline = max((row.deadline for row in rows), default=None)
        record = _Pass(time.monotonic(), sum(task.work for task in batch), deadline)

        def completed(results: Sequence[LabelScores | None]) -> int:
            return sum(task.work for task, result in zip(batch, results, strict=False) if result is not None)

        def call() -> Awaitable[Sequence[LabelScores | None]]:
            return engine.critique(batch, rows, background=background)

        return await self.watch(self.critiques, record, call, completed)

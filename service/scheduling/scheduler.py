"""The one scheduler between the services and the engine: online requests and batch jobs'
lines are two priorities of it.

Admission (all-or-nothing, online only) is separate from pass forming. An online request
is refused with 429 when the queue is full, or when its predicted completion would miss
its deadline (both decided in ``service.scheduling.admission``); batch lines are never
refused (their batch's window is their deadline). Passes are formed around the oldest
waiting entry of a priority from its nearest neighbours by length among the oldest ones,
within the engine's budgets (``service.scheduling.passes``) and an item count, so long
items are never starved. Online work goes first; when batch work may take the engine, and
how large its passes may be, is ``service.scheduling.background``'s. Every pass, online or
batch, runs through the watchdog (``service.scheduling.watchdog``).

Critique-mode entries (a generation before the read) form passes of their own kind, with
their own limit of passes at once: a running generation never holds the slot plain scores
need, so a 1-token score never waits for a 512-token critique. Each running entry has a
``CritiqueRow``, dropped when its request gives it up: an engine that can leaves that row of
its generation before the next step and returns None for it.

Each kind's loop wakes on events (an arrival, a pass's end, an entry given up) or at the
instant a rule's answer changes (a gathering window or a rest ends); it never polls. Every
entry has its own future, created before it is enqueued; the loop only resolves futures
that are not done yet, and a failure fails exactly the futures of its pass. A loop survives
faults of its own; if one ever ends unexpectedly, ``on_stopped`` says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from service.core.errors import ErrorKind, JudgeError
from service.core.tasks import LabelScores, ScoringTask
from service.engines.base import Engine
from service.observability.metrics import Metrics
from service.scheduling.admission import overloaded, queue_full
from service.scheduling.background import Background
from service.scheduling.execution import Execution, fail
from service.scheduling.kinds import Kind
from service.scheduling.passes import PassLimits, fits
from service.scheduling.submission import ClientGone, Entry, Priority, Submission
from service.scheduling.watchdog import Watchdog

__all__ = ["ClientGone", "Priority", "Scheduler", "Submission"]

logger = logging.getLogger(__name__)

# Batch passes are formed from this many times the largest pass of the oldest waiting lines:
# they have no admission prediction to keep, and a wider window groups lengths better.
BATCH_WINDOW = 4
# A pass was launched: look again at once.
_LAUNCHED = -math.inf
# Defaults of a watchdog the caller did not give (one that is never run never trips).
_WATCHDOG_MULTIPLE, _WATCHDOG_FLOOR_S = 10.0, 30.0


class Scheduler:
    """Admits online requests and takes batch lines, forms passes and runs them on the engine."""

    def __init__(
        self,
        engine: Engine,
        limits: PassLimits,
        metrics: Metrics,
        *,
        max_queue: int,
        max_batch_size: int,
        max_wait_s: float,
        watchdog: Watchdog | None = None,
        on_stopped: Callable[[], None] | None = None,
        max_retry_after_s: float | None = None,
    ) -> None:
        self._engine = engine
        self.limits = limits
        self._metrics = metrics
        self._watchdog = watchdog or Watchdog(_WATCHDOG_MULTIPLE, _WATCHDOG_FLOOR_S)
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._on_stopped = on_stopped
        # The longest deadline a request may have: no Retry-After asks a client to wait longer.
        self.max_retry_after_s = max_retry_after_s
        self.background = Background(limits, max_batch_size)
        self._execution = Execution(engine, self._watchdog, metrics, self.background, self._skip)
        self._plain = Kind("scores", critiques=False, inflight=limits.inflight)
        self._critiques = Kind("critiques", critiques=True, inflight=limits.critique_inflight)
        self._kinds = (self._plain, self._critiques)
        # Plain scores' online throughput: the rate exported, and what the runtime's calibration seeds.
        self.throughput = self._plain.throughput
        self._depth = 0
        # Batch items and passes in the engine, across kinds.
        self._background_items = 0
        self._background_passes = 0
        self._closing = False
        self._drained = asyncio.Event()
        # Each pass's task and entries: a task cancelled before it ran (at close) fails them here.
        self._passes: dict[asyncio.Task[None], list[Entry]] = {}

    @property
    def depth(self) -> int:
        """Online entries admitted and not yet resolved (waiting or running)."""
        return self._depth

    @property
    def batch_waiting(self) -> int:
        """Batch entries waiting for a pass."""
        return sum(len(kind.pending[Priority.BATCH]) for kind in self._kinds)

    @property
    def running(self) -> bool:
        """Whether every loop is alive."""
        return all(kind.loop_task is not None and not kind.loop_task.done() for kind in self._kinds)

    def start(self) -> None:
        for kind in self._kinds:
            kind.loop_task = asyncio.create_task(self._loop(kind), name=f"scheduler-{kind.name}")
            kind.loop_task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if self._closing:
            return
        error = None if task.cancelled() else task.exception()
        logger.critical("the scheduler loop %s ended unexpectedly", task.get_name(), exc_info=error)
        self._fail_pending(JudgeError(ErrorKind.UNAVAILABLE, "the judge is unavailable"))
        if self._on_stopped is not None:
            self._on_stopped()

    def _fail_pending(self, error: JudgeError) -> None:
        for kind in self._kinds:
            for entries in kind.pending.values():
                waiting, entries[:] = list(entries), []
                for entry in waiting:
                    entry.waiting = False
                fail(waiting, error)
        self._batch_gauge()

    async def run(
        self,
        tasks: Sequence[ScoringTask],
        deadline: float,
        disconnected: Callable[[], Awaitable[None]] | None = None,
        priority: Priority = Priority.ONLINE,
    ) -> list[LabelScores]:
        """Admit ``tasks`` (all or none) and wait for their results."""
        return await self.submit(tasks, deadline, priority).wait(deadline, disconnected)

    def submit(self, tasks: Sequence[ScoringTask], deadline: float, priority: Priority = Priority.ONLINE) -> Submission:
        """Admit all ``tasks`` or none (online), or take them (batch). ``deadline`` is a
        ``time.monotonic()`` instant; batch work's is infinite (its batch's window applies)."""
        if self._closing or any(kind.loop_task is not None and kind.loop_task.done() for kind in self._kinds):
            raise JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down")
        online = priority is Priority.ONLINE
        if online:
            self._admit(tasks, deadline)
        loop = asyncio.get_running_loop()
        submission = Submission(self._metrics if online else None)
        for task in tasks:
            entry = Entry(task, loop.create_future(), deadline, submission, priority)
            entry.future.add_done_callback(partial(self._on_done, entry))
            submission.add(entry)
        now = time.monotonic()
        for entry in submission.entries:
            kind = self._kind_of(entry.task)
            kind.pending[priority].append(entry)
            entry.waiting = True
            if online:
                kind.work += entry.task.work
        if online:
            self._depth += len(tasks)
            self._drained.clear()
            self._metrics.queue_depth.set(self._depth)
            self.background.online(now)
        else:
            self.background.arrived = now
            self._batch_gauge()
        self._wake_all()
        return submission

    def _admit(self, tasks: Sequence[ScoringTask], deadline: float) -> None:
        if (full := queue_full(self._depth, len(tasks), self.max_queue)) is not None:
            raise full
        for kind in self._kinds:
            if tokens := sum(task.work for task in tasks if self._kind_of(task) is kind):
                late = overloaded(kind.throughput, kind.work, tokens, deadline, self.max_retry_after_s)
                if late is not None:
                    self._metrics.admission_refusals.inc()
                    raise late

    def _kind_of(self, task: ScoringTask) -> Kind:
        return self._critiques if task.critique is not None else self._plain

    def _on_done(self, entry: Entry, _: asyncio.Future[LabelScores]) -> None:
        kind = self._kind_of(entry.task)
        online = entry.priority is Priority.ONLINE
        if entry.waiting:
            # Given up while it waited (its client left, say): it leaves now, not when a pass
            # slot frees, so submit-and-leave loops during a long pass hold nothing.
            entry.waiting = False
            kind.pending[entry.priority].remove(entry)
            self._skip(entry)
            if not online:
                self._batch_gauge()
        if online:
            self._depth -= 1
            kind.work -= entry.task.work
            self._metrics.queue_depth.set(self._depth)
            if self._depth == 0:
                self.background.online(time.monotonic())
                self._drained.set()
                self._wake_all()
        entry.submission.entry_done()

    def _wake_all(self) -> None:
        for kind in self._kinds:
            kind.wake.set()

    async def _loop(self, kind: Kind) -> None:
        while True:
            kind.wake.clear()
            try:
                wake_at = self._step(kind)
            except Exception:
                # A fault of the loop itself, outside any engine call: fail the oldest entry
                # (so the loop always makes progress) and go on.
                logger.exception("the scheduler failed to form a pass")
                self._metrics.queue_faults.inc()
                if (oldest := kind.pop_oldest()) is not None:
                    fail([oldest], JudgeError(ErrorKind.INTERNAL, "internal error"))
                continue
            if wake_at == _LAUNCHED:
                continue
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            try:
                await asyncio.wait_for(kind.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _step(self, kind: Kind) -> float | None:
        """Launch one pass if one may start now (``_LAUNCHED``); else the instant to look
        again (None: only when something happens)."""
        now = time.monotonic()
        kind.drop_stale(now, self._skip)
        online, batch = kind.pending[Priority.ONLINE], kind.pending[Priority.BATCH]
        if not online:
            kind.gather_until = None  # a gathering whose entries were all given up ends with them
        online_busy = self._depth > 0
        if online_busy:
            self.background.online(now)
        waits: list[float] = []
        if batch:
            wait = self._batch_turn(kind, now, online_busy, len(batch))
            if wait is None:
                return self._launch(kind, Priority.BATCH, now)
            waits.append(wait)
        if online and kind.free(Priority.ONLINE, self.limits.continuous):
            if self.max_wait_s > 0 and len(online) < self.max_batch_size:
                if kind.gather_until is None:
                    kind.gather_until = now + self.max_wait_s
                if now < kind.gather_until:
                    return min([*waits, kind.gather_until])
            return self._launch(kind, Priority.ONLINE, now)
        return min((w for w in waits if not math.isinf(w)), default=None)

    def _batch_turn(self, kind: Kind, now: float, online_busy: bool, waiting: int) -> float | None:
        """None when a batch pass of ``kind`` may start now; else when to look again (inf:
        when a pass ends)."""
        gathered = self.background.gathered(now, waiting)
        if gathered is not None:
            return gathered
        if self.limits.continuous:
            # The engine orders online work first itself: batch work only keeps to its slots.
            return None if self._background_items < self.background.slots(now) else math.inf
        if not kind.free(Priority.BATCH, self.limits.continuous) or self._background_passes:
            return math.inf
        return self.background.turn(now, online_busy)

    def _launch(self, kind: Kind, priority: Priority, now: float) -> float:
        entries = self._take(kind, priority, now)
        try:
            for entry in entries:
                entry.submission.start()
            job = asyncio.create_task(self._run_pass(kind, priority, entries), name=f"pass-{kind.name}")
        except Exception:
            # The entries left their queue and will never run: they fail now, not at their deadlines.
            logger.exception("a pass of %d entries failed to launch", len(entries))
            self._metrics.queue_faults.inc()
            fail(entries, JudgeError(ErrorKind.INTERNAL, "internal error"))
            return _LAUNCHED
        kind.running[priority] += 1
        if priority is Priority.ONLINE:
            kind.gather_until = None
        else:
            self._background_items += len(entries)
            self._background_passes += 1
            self.background.pass_started()
            self._batch_gauge()
        self._passes[job] = entries
        job.add_done_callback(partial(self._pass_ended, kind, priority, len(entries)))
        return _LAUNCHED

    def _pass_ended(self, kind: Kind, priority: Priority, items: int, job: asyncio.Task[None]) -> None:
        entries = self._passes.pop(job, [])
        if job.cancelled():
            fail(entries, _shutting_down())
        kind.running[priority] -= 1
        if priority is Priority.BATCH:
            self._background_items -= items
            self._background_passes -= 1
        self._wake_all()

    def _take(self, kind: Kind, priority: Priority, now: float) -> list[Entry]:
        """A pass of ``priority``: online, the oldest entry and its nearest by length among a
        pass's worth of the oldest (so a newer item overtakes an older one by at most a pass,
        and completion stays close to arrival order, which is what admission predicts), within
        the engine's budget; batch, among a wider window, within a batch pass's shape now."""
        if priority is Priority.ONLINE:
            head, size, budget = self.max_batch_size, self.max_batch_size, None
        else:
            shape = self.background.shape(now)
            head, size, budget = BATCH_WINDOW * self.max_batch_size, shape.size, shape.budget
        return kind.take(priority, head, size, lambda tasks: fits(self._engine, self.limits, tasks, budget))

    def _skip(self, entry: Entry) -> None:
        """Count an online entry given up before its result: by its request (counted under
        the request's reason), else by its deadline (it fails with ``deadline_exceeded``)."""
        if entry.future.done():
            reason = entry.abandoned or "cancelled"
        else:
            reason = "deadline"
            entry.future.set_exception(JudgeError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded"))
        if entry.priority is Priority.ONLINE:
            self._metrics.items_skipped.labels(reason=reason).inc()

    def _batch_gauge(self) -> None:
        self._metrics.batch_lane_depth.set(self.batch_waiting)

    async def _run_pass(self, kind: Kind, priority: Priority, entries: list[Entry]) -> None:
        # Online passes feed the kind's admission rate; plain scores' is the rate exported.
        online = priority is Priority.ONLINE
        rate = kind.throughput if online else None
        await self._execution.run(entries, kind.critiques, rate, export_rate=online and kind is self._plain)

    async def close(self, grace_s: float) -> None:
        """Stop admitting, let admitted online work finish within ``grace_s``, fail the rest
        (batch work's included) with 503."""
        self._closing = True
        if self._depth > 0:
            try:
                await asyncio.wait_for(self._drained.wait(), grace_s)
            except asyncio.TimeoutError:
                pass
        self._fail_pending(_shutting_down())
        tasks = [t for t in (*(kind.loop_task for kind in self._kinds), *self._passes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _shutting_down() -> JudgeError:
    return JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down")

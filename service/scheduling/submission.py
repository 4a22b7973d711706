"""What the scheduler holds: one entry per task, of a priority, and one request's entries
(``Submission``): their futures, and how the request waits or gives up.

Every entry has its own future, created before it is enqueued. ``Submission.wait`` returns
every result in order, or gives every unresolved entry up (client gone, deadline passed,
the waiting task cancelled), so the scheduler never computes what nobody will read.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import ErrorKind, JudgeError
from service.core.tasks import LabelScores, ScoringTask
from service.observability.metrics import Metrics


class Priority(enum.IntEnum):
    """Online requests go first; batch jobs' lines run behind them (lower values first)."""

    ONLINE = 0
    BATCH = 1


class ClientGone(Exception):
    """The client disconnected before its results were ready."""


@dataclass(slots=True, eq=False)
class Entry:
    """One task in the scheduler, from its admission until its future is resolved."""

    task: ScoringTask
    future: asyncio.Future[LabelScores]
    deadline: float
    submission: Submission
    priority: Priority = Priority.ONLINE
    enqueued: float = field(default_factory=time.monotonic)
    # Why the request gave this entry up ("cancelled", "deadline"), for the skip counter.
    abandoned: str | None = None
    # Whether the entry waits for a pass (not yet taken into one nor dropped).
    waiting: bool = False


class Submission:
    """The entries of one admitted request (or one batch line): wait for them, or give them up.
    ``metrics``: the online request gauges it moves (None for batch work, which they never count)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.entries: list[Entry] = []
        self.started = False
        self._unresolved = 0
        self._metrics = metrics
        if metrics is not None:
            metrics.requests_waiting.inc()

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        self._unresolved += 1

    @property
    def futures(self) -> list[asyncio.Future[LabelScores]]:
        return [entry.future for entry in self.entries]

    def abandon(self, reason: str) -> None:
        """Give up every entry not yet resolved: waiting ones are skipped (counted under
        ``reason``), running ones are aborted where the engine can abort them."""
        for entry in self.entries:
            if not entry.future.done():
                entry.abandoned = reason
                entry.future.cancel()

    async def wait(self, deadline: float, disconnected: Callable[[], Awaitable[None]] | None = None) -> list[Any]:
        """Every result, in order; gives everything up on failure, disconnect, deadline or
        cancellation of the waiting task itself. An infinite ``deadline`` never passes."""
        gathered = asyncio.gather(*self.futures)
        # Its outcome is read below only on success; mark it retrieved for the other paths.
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        watcher = asyncio.ensure_future(disconnected()) if disconnected else None
        waiting: set[asyncio.Future[Any]] = {gathered} if watcher is None else {gathered, watcher}
        timeout = None if math.isinf(deadline) else max(0.0, deadline - time.monotonic())
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The request's task was cancelled (its client left, the server shuts down, a
            # batch chunk lost its lease): nobody will read these results, so none may be computed.
            self.abandon("cancelled")
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if gathered in done:
            try:
                return list(gathered.result())
            finally:
                self.abandon("cancelled")  # the rest of a request that failed
        if watcher is not None and watcher in done:
            self.abandon("cancelled")
            raise ClientGone
        self.abandon("deadline")
        raise JudgeError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded")

    def entry_done(self) -> None:
        self._unresolved -= 1
        if self._unresolved == 0 and self._metrics is not None:
            (self._metrics.requests_running if self.started else self._metrics.requests_waiting).dec()

    def start(self) -> None:
        if not self.started and self._unresolved:
            self.started = True
            if self._metrics is not None:
                self._metrics.requests_waiting.dec()
                self._metrics.requests_running.inc()

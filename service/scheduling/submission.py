"""One admitted request's items: their futures, and how the request waits or gives up.

Every item has its own future, created before it is enqueued. ``Submission.wait`` returns
every result in order, or gives every unresolved item up (client gone, deadline passed,
the waiting task cancelled), so the queue never computes what nobody will read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import ErrorKind, JudgeError
from service.core.tasks import LabelScores, ScoringTask
from service.observability.metrics import Metrics


class ClientGone(Exception):
    """The client disconnected before its results were ready."""


@dataclass(slots=True, eq=False)
class _Entry:
    task: ScoringTask
    future: asyncio.Future[LabelScores]
    deadline: float
    submission: Submission
    enqueued: float = field(default_factory=time.monotonic)
    # Why the request gave this item up ("cancelled", "deadline"), for the skip counter.
    abandoned: str | None = None
    # Whether the item waits in its lane (not yet taken into a batch nor dropped from it).
    waiting: bool = False


class Submission:
    """The items of one admitted request: wait for them, or give them up."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.started = False
        self._unresolved = 0

    def add(self, entry: _Entry) -> None:
        self.entries.append(entry)
        self._unresolved += 1

    @property
    def futures(self) -> list[asyncio.Future[LabelScores]]:
        return [entry.future for entry in self.entries]

    def abandon(self, reason: str) -> None:
        """Give up every item not yet resolved: queued ones are skipped (counted under
        ``reason``), running ones are aborted where the engine can abort them."""
        for entry in self.entries:
            if not entry.future.done():
                entry.abandoned = reason
                entry.future.cancel()

    async def wait(self, deadline: float, disconnected: Callable[[], Awaitable[None]] | None = None) -> list[Any]:
        """Every result, in order; gives everything up on failure, disconnect, deadline or
        cancellation of the waiting task itself."""
        gathered = asyncio.gather(*self.futures)
        # Its outcome is read below only on success; mark it retrieved for the other paths.
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        watcher = asyncio.ensure_future(disconnected()) if disconnected else None
        waiting: set[asyncio.Future[Any]] = {gathered} if watcher is None else {gathered, watcher}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            # The request's task was cancelled (e.g. by the server's shutdown): nobody will
            # read these results, so none may be computed.
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

    def _entry_done(self, metrics: Metrics) -> None:
        self._unresolved -= 1
        if self._unresolved == 0:
            (metrics.requests_running if self.started else metrics.requests_waiting).dec()

    def _start(self, metrics: Metrics) -> None:
        if not self.started and self._unresolved:
            self.started = True
            metrics.requests_waiting.dec()
            metrics.requests_running.inc()

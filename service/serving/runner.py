"""What a service runs its tasks on: the ``Runner`` protocol.

A service turns a wire request into tasks and tasks' results into a wire answer; where
the tasks run is the runner's business. Online requests run on the scheduler at online
priority, with admission, their deadline and their client's disconnect; a batch line runs
on the same scheduler at batch priority, within its batch's window.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from service.core.tasks import LabelScores, ScoringTask

# Resolves when the request's client has gone (None: nobody to watch, as in a batch).
Disconnected = Callable[[], Awaitable[None]] | None


class Runner(Protocol):
    """Runs a request's tasks: every result in order, or a ``JudgeError``."""

    async def run(
        self, tasks: Sequence[ScoringTask], deadline: float, disconnected: Disconnected
    ) -> list[LabelScores]: ...

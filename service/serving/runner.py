"""What a service runs its tasks on: the ``Runner`` protocol.

A service turns a wire request into tasks and tasks' results into a wire answer; where
the tasks run is the runner's business. Online requests run on the scheduler at online
priority, with admission, their deadline and their client's disconnect; a batch line runs
on the same scheduler at batch priority, within its batch's window.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from service.core.tasks import LabelScores, ScoringTask
from service.requests.work import WorkLimits
from service.scheduling.scheduler import Priority, Scheduler

# Resolves when the request's client has gone (None: nobody to watch, as in a batch).
Disconnected = Callable[[], Awaitable[None]] | None


class Runner(Protocol):
    """Runs a request's tasks: every result in order, or a ``JudgeError``."""

    async def run(
        self, tasks: Sequence[ScoringTask], deadline: float, disconnected: Disconnected
    ) -> list[LabelScores]: ...


# The scheduler and the work limits, once the judge is ready (else a 503 ``JudgeError``).
Ready = Callable[[], tuple[Scheduler, WorkLimits]]


class OnlineRunner:
    """An online request: admission (429), its deadline and its client's disconnect. Every
    prompt is checked against what one pass may hold first (422 before any work)."""

    def __init__(self, ready: Ready) -> None:
        self._ready = ready

    async def run(self, tasks: Sequence[ScoringTask], deadline: float, disconnected: Disconnected) -> list[LabelScores]:
        scheduler, work = self._ready()
        work.check_memory(tasks)
        return await scheduler.run(tasks, deadline, disconnected, Priority.ONLINE)


class BatchRunner:
    """A batch line: behind online work, never refused, and with no deadline of its own (its
    batch's window applies: the worker gives the line up when its chunk's lease ends). Its
    prompts are checked as an online request's are."""

    def __init__(self, ready: Ready) -> None:
        self._ready = ready

    async def run(self, tasks: Sequence[ScoringTask], deadline: float, disconnected: Disconnected) -> list[LabelScores]:
        scheduler, work = self._ready()
        work.check_memory(tasks)
        return await scheduler.run(tasks, math.inf, None, Priority.BATCH)

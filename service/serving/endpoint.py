"""The one path every endpoint service takes: readiness (checked once a request), the
request's deadline, its preparation off the event loop, the run on a ``Runner``, the
answer, and the metrics.

An endpoint service is a handler on this path (``Endpoint``): ``prepare`` turns the wire
request into tasks with every limit checked (the modules of ``service.requests``),
``respond`` turns their results into the wire answer, and ``tally`` says what the answer
counts in the metrics.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from service.core.tasks import LabelScores
from service.requests.limits import Limits
from service.requests.prepared import Prepared
from service.requests.prompts import Prompts
from service.serving.runner import Disconnected, Runner
from service.serving.runtime import Runtime

RequestT = TypeVar("RequestT")
ContextT = TypeVar("ContextT")
ResponseT = TypeVar("ResponseT")


@dataclass(frozen=True)
class Judge:
    """The ready judge one request is prepared and answered with."""

    model: str
    prompts: Prompts
    limits: Limits


@dataclass(frozen=True)
class Tally:
    """What an answer counts in the metrics: its method (the metric's label), its items
    (pairs, candidates), and the expected scores it returned."""

    method: str
    items: int
    expected_scores: Sequence[float] = ()


class Endpoint(ABC, Generic[RequestT, ContextT, ResponseT]):
    """One endpoint's handler on the shared path, over the runtime (readiness, the model's
    name, the metrics) and the ``Runner`` its tasks run on."""

    # The endpoint's name in the metrics.
    name: ClassVar[str]
    # Whether building the answer is CPU work to keep off the event loop (a fit, say).
    respond_in_thread: ClassVar[bool] = False

    def __init__(self, runtime: Runtime, runner: Runner) -> None:
        self.runtime = runtime
        self.runner = runner

    async def serve(
        self, request: RequestT, timeout_s: float | None, disconnected: Disconnected, arrived: float | None = None
    ) -> ResponseT:
        """The answer to ``request``, due ``timeout_s`` (else the server's default) after it
        ``arrived`` (else now), given up once ``disconnected`` resolves."""
        prompts, limits = self.runtime.require_ready()
        judge = Judge(self.runtime.model_name, prompts, limits)
        deadline = limits.work.deadline(timeout_s, arrived)
        # Rendering and tokenising are CPU work: off the event loop.
        prepared = await asyncio.to_thread(self.prepare, request, judge)
        results = await self.runner.run(prepared.tasks, deadline, disconnected)
        if self.respond_in_thread:
            response = await asyncio.to_thread(self.respond, request, judge, prepared, results)
        else:
            response = self.respond(request, judge, prepared, results)
        self._count(prepared, self.tally(request, response))
        return response

    @abstractmethod
    def prepare(self, request: RequestT, judge: Judge) -> Prepared[ContextT]:
        """The request's tasks, every limit checked, and what its answer needs."""

    @abstractmethod
    def respond(
        self, request: RequestT, judge: Judge, prepared: Prepared[ContextT], results: list[LabelScores]
    ) -> ResponseT:
        """The wire answer from the tasks' results (in the tasks' order)."""

    @abstractmethod
    def tally(self, request: RequestT, response: ResponseT) -> Tally:
        """What the answer counts in the metrics."""

    def _count(self, prepared: Prepared[ContextT], tally: Tally) -> None:
        metrics = self.runtime.metrics
        tasks = prepared.tasks
        metrics.answered(self.name, tally.method, tally.items, len(tasks), sum(t.length for t in tasks))
        for score in tally.expected_scores:
            metrics.expected_score.observe(score)

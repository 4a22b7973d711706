"""The judge's lifecycle: loading, ready, draining or failed, and the exit code.

Two deadlines bound it. A load still running past ``JUDGE_LOAD_TIMEOUT_S`` is hung. The
shutdown grace (``JUDGE_SHUTDOWN_GRACE_S``) is one budget, counted from the moment
draining begins: the drain, the server's own graceful close and the queue's close all
spend the same remaining time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from service.config import Settings
from service.observability.metrics import Metrics
from service.scheduling.watchdog import Stall

logger = logging.getLogger(__name__)

# How often a live judge is looked at for having died.
DEATH_CHECK_S = 0.5


class Lifecycle:
    """Readiness, drain, liveness and the exit code of one judge; the ``/ready`` gauge follows it."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.load_timeout_s = settings.load_timeout_s
        self.shutdown_grace_s = settings.shutdown_grace_s
        self._metrics = metrics
        self.ready = False
        self.draining = False
        self.failed = False
        self.exit_code = 0
        self.stall: Stall | None = None
        self._drain_deadline: float | None = None
        # A load still running past this instant is hung (set when the load begins).
        self._load_deadline: float | None = None
        # Set by the runtime: whether its engine and batch loop still run.
        self.parts_alive: Callable[[], bool] = lambda: True
        # Set by whoever runs the server: stops it (the exit code says why).
        self.request_exit: Callable[[], None] = lambda: None

    def loading(self) -> None:
        """The load begins: its deadline starts now."""
        self._load_deadline = time.monotonic() + self.load_timeout_s

    def loaded(self) -> None:
        self.ready = True
        self._metrics.ready.set(1)

    def fail(self) -> None:
        """A part failed for good (the load, or the batch loop, which cannot be restarted
        safely with futures in unknown states): health and readiness fail."""
        self.failed = True
        self._metrics.ready.set(0)

    def stalled(self, stall: Stall) -> None:
        """The watchdog found the engine stalled (for good)."""
        self.stall = stall
        self._metrics.ready.set(0)

    @property
    def load_overdue(self) -> bool:
        """Whether the model is still loading past its load deadline (a hung load)."""
        return not self.ready and self._load_deadline is not None and time.monotonic() > self._load_deadline

    @property
    def stuck(self) -> bool:
        """Whether a thread may never return: the engine stalled, or the load hung."""
        return self.stall is not None or self.load_overdue

    @property
    def problem(self) -> tuple[str, dict[str, Any] | None] | None:
        """Why the judge is not alive, with details for /health; None while it is."""
        if self.stall is not None:
            return "the judge engine stalled", self.stall.details
        if self.load_overdue:
            return "the model did not load within its deadline", {"load_timeout_s": self.load_timeout_s}
        if self.failed or not self.parts_alive():
            return "the judge is dead", None
        return None

    @property
    def alive(self) -> bool:
        return self.problem is None

    @property
    def accepting(self) -> bool:
        return self.ready and not self.draining and self.alive

    def begin_drain(self) -> None:
        """Stop admitting new requests (503); admitted work still completes. Starts the
        shutdown grace budget."""
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.shutdown_grace_s
        self.draining = True
        self._metrics.ready.set(0)

    def grace_left(self) -> float:
        """Seconds left of the shutdown grace budget (all of it before draining began)."""
        if self._drain_deadline is None:
            return self.shutdown_grace_s
        return max(0.0, self._drain_deadline - time.monotonic())

    async def exit_when_dead(self) -> None:
        """A dead engine or batch loop cannot recover in-process: stop admitting (503), then
        ask the server to exit so the orchestrator restarts the pod; the exit code says why."""
        while self.alive:
            await asyncio.sleep(DEATH_CHECK_S)
        problem = self.problem
        logger.error("%s; draining and exiting", problem[0] if problem else "the judge is dead")
        self.exit_code = 1
        self.begin_drain()
        self.request_exit()

"""Graceful shutdown: on SIGTERM stop admitting (503, not ready), let admitted work
finish within what is left of the grace budget, then let uvicorn close and exit.

The grace (``JUDGE_SHUTDOWN_GRACE_S``) is one budget counted from the first signal: the
drain, uvicorn's graceful close of open connections and the queue's close each get only
what is left of it, so the whole shutdown fits the pod's termination grace period.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

import uvicorn

from service.config import EXIT_MARGIN_S
from service.serving.lifecycle import Lifecycle

logger = logging.getLogger(__name__)


def forced_exit_code(sig: int) -> int:
    """The exit status of a second signal: 128 + its number (143 for SIGTERM, 130 for
    SIGINT), the shell's convention, reached by exiting rather than by dying of the signal."""
    return 128 + sig


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains the judge before exiting.

    While draining, the server still accepts connections, so late requests get a clear
    503 instead of a refused connection. A second signal exits at once, with
    ``forced_exit_code``. ``queued`` says how much admitted work is still waiting.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, queued: Callable[[], int]) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self._queued = queued
        self._draining = False
        lifecycle.request_exit = self.exit_within_grace

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:
            self._exit_now(sig)
        self._draining = True
        self.lifecycle.begin_drain()
        logger.info("signal %d: draining for up to %.0fs", sig, self.lifecycle.grace_left())
        threading.Thread(target=self._exit_when_drained, name="drain", daemon=True).start()

    def _exit_when_drained(self) -> None:
        while self._queued() > 0 and self.lifecycle.grace_left() > 0:
            time.sleep(0.05)
        logger.info("drained; shutting down")
        self.exit_within_grace()

    def exit_within_grace(self) -> None:
        """Close the server; open connections get only what is left of the grace budget."""
        self.lifecycle.begin_drain()
        self.config.timeout_graceful_shutdown = self.lifecycle.grace_left()  # type: ignore[assignment]
        self.should_exit = True
        if self.lifecycle.stuck:
            # A pass or a load stuck in its thread would hold the interpreter's exit forever
            # (it joins its worker threads): past the grace and the exit margin, leave anyway.
            limit = self.lifecycle.grace_left() + EXIT_MARGIN_S
            threading.Thread(target=self._exit_hard_after, args=(limit,), name="hard-exit", daemon=True).start()

    def _exit_hard_after(self, seconds: float) -> None:
        time.sleep(seconds)
        logger.critical("the process did not exit within %.0fs of a stuck engine; exiting now", seconds)
        logging.shutdown()
        os._exit(self.lifecycle.exit_code or 1)

    @staticmethod
    def _exit_now(sig: int) -> NoReturn:
        """The operator insists: no drain, no graceful close. uvicorn would wait for a running
        engine pass in its thread and then re-raise the signal (death by SIGTERM, not an
        exit status), so exit here. Child processes (vLLM's engine core) get SIGTERM first,
        so none outlives this one."""
        code = forced_exit_code(sig)
        logger.warning("second signal %d: exiting at once with status %d", sig, code)
        for child in multiprocessing.active_children():
            child.terminate()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

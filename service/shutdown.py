"""Graceful shutdown: on SIGTERM stop admitting (503, not ready), let admitted work
finish within the grace period, then let uvicorn close and exit."""

from __future__ import annotations

import logging
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains the judge before exiting.

    While draining, the server still accepts connections, so late requests get a clear
    503 instead of a refused connection. A second signal exits at once.
    """

    def __init__(self, config: uvicorn.Config, judge: Any, grace_s: float) -> None:
        super().__init__(config)
        self.judge = judge
        self.grace_s = grace_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        logger.info("signal %d: draining for up to %.0fs", sig, self.grace_s)
        self.judge.begin_drain()
        threading.Thread(target=self._exit_when_drained, name="drain", daemon=True).start()

    def _exit_when_drained(self) -> None:
        deadline = time.monotonic() + self.grace_s
        queue = self.judge.queue
        while queue is not None and queue.depth > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        logger.info("drained; shutting down")
        self.should_exit = True

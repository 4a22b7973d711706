"""The jobs worker: an asyncio task in every replica that leases chunks, answers their
lines in the batch lane, writes each answer as it completes, and moves batches on
(finalize, expire, cancel, purge).

A chunk's lease is renewed while it runs; when the renewal fails (the batch was
cancelled or expired, or another worker took the chunk over after a stall), the chunk's
lines still running are given up. Lines left pending (a shutdown, the judge not ready)
are free to claim again at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

from service.core.errors import JudgeError
from service.jobs.answers import Answerer, Retry
from service.jobs.lane import BatchLane, LaneRuntime
from service.jobs.store import Claim, Due, ItemRow, Store, new_id, now_s
from service.serving.runtime import Runtime

logger = logging.getLogger(__name__)

# How often an idle worker looks for work another replica's API created.
POLL_S = 1.0
# Longest pause between a running chunk's lease renewals.
RENEW_EVERY_S = 2.0
# How often retention runs.
PURGE_EVERY_S = 300.0


class Worker:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        *,
        lease_s: float,
        concurrency: int,
        retention_s: float,
        on_line: Callable[[int], None] = lambda _: None,
        on_depth: Callable[[int], None] = lambda _: None,
        on_pass: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.lease_s = lease_s
        self.concurrency = concurrency
        self.retention_s = retention_s
        self._on_line = on_line
        self._on_depth = on_depth
        self._on_pass = on_pass
        self.name = f"{socket.gethostname()}:{os.getpid()}:{new_id('')[:8]}"
        self.wake = asyncio.Event()
        self.lane: BatchLane | None = None
        self._answerer: Answerer | None = None
        self._chunks: set[asyncio.Task[None]] = set()
        self._purged = float("-inf")

    async def run(self) -> None:
        """Until cancelled: claim while there is room, move batches on, then wait."""
        while True:
            try:
                await self._step()
            except JudgeError as exc:
                # The store answered that it is away (a lost database): its message says
                # why, and a stack every poll would bury it.
                logger.warning("the jobs worker skipped a step: %s", exc.message)
            except Exception:
                # A fault of the store (a locked or unreachable database): try again later.
                logger.exception("the jobs worker failed a step")
            try:
                await asyncio.wait_for(self.wake.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def _step(self) -> None:
        for found in await asyncio.to_thread(self.store.due, self.lease_s):
            due: Due | None = found
            while due is not None and await asyncio.to_thread(self.store.finalize, due):
                logger.info("batch %s: %s -> %s", due.batch_id, due.status, due.to)
                # finalizing goes on to completed at once.
                due = Due(due.batch_id, "finalizing", "completed") if due.to == "finalizing" else None
        if time.monotonic() - self._purged > PURGE_EVERY_S:
            self._purged = time.monotonic()
            await asyncio.to_thread(self.store.purge, now_s() - int(self.retention_s))
        if not self._ensure_lane():
            return
        while len(self._chunks) < self.concurrency:
            claim = await asyncio.to_thread(self.store.claim, self.name, self.lease_s)
            if claim is None:
                return
            task = asyncio.create_task(self._work(claim), name=f"chunk-{claim.batch_id}-{claim.chunk}")
            self._chunks.add(task)
            task.add_done_callback(self._chunk_done)

    def _chunk_done(self, task: asyncio.Task[None]) -> None:
        self._chunks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a batch chunk failed", exc_info=task.exception())
        self.wake.set()

    def _ensure_lane(self) -> bool:
        """The lane, once the runtime's engine and queue are up and accepting."""
        runtime = self.runtime
        if not runtime.lifecycle.accepting or runtime.engine is None or runtime.queue is None:
            return False
        if self.lane is None:
            queue = runtime.queue
            self.lane = BatchLane(
                runtime.engine,
                lambda: queue.depth,
                max_batch_size=runtime.settings.max_batch_size,
                busy_items=max(1, runtime.settings.max_batch_size // 8),
                on_depth=self._on_depth,
                on_pass=self._on_pass,
            )
            self.lane.start()
            self._answerer = Answerer(runtime, LaneRuntime(runtime, self.lane))
        return True

    async def _work(self, claim: Claim) -> None:
        lines = [asyncio.create_task(self._line(claim, item)) for item in claim.items]
        keeper = asyncio.create_task(self._keep_lease(claim, lines))
        try:
            await asyncio.gather(*lines, return_exceptions=True)
        finally:
            keeper.cancel()
            for line in lines:
                line.cancel()
            await asyncio.gather(keeper, *lines, return_exceptions=True)
            await asyncio.shield(asyncio.to_thread(self.store.release, claim, self.name))

    async def _keep_lease(self, claim: Claim, lines: list[asyncio.Task[None]]) -> None:
        while True:
            # Often enough that a cancel or an expiry stops the chunk within seconds.
            await asyncio.sleep(min(self.lease_s / 3, RENEW_EVERY_S))
            if not await asyncio.to_thread(self.store.renew, claim, self.name, self.lease_s):
                # Cancelled, expired, or taken over: what still runs is abandoned.
                for line in lines:
                    line.cancel()
                return

    async def _line(self, claim: Claim, item: ItemRow) -> None:
        assert self._answerer is not None
        try:
            status, body = await self._answerer.answer(claim.endpoint, item.body)
        except Retry:
            return
        if await asyncio.to_thread(self.store.record, claim.batch_id, item.line, status, body):
            self._on_line(status)

    async def close(self) -> None:
        """Give running chunks up (their lines stay pending for the next claim) and stop the lane."""
        for task in list(self._chunks):
            task.cancel()
        await asyncio.gather(*self._chunks, return_exceptions=True)
        if self.lane is not None:
            await self.lane.close()

"""Running one formed pass: through the watchdog on the engine, its entries' futures
resolved from what the engine returns, its failures failing exactly its own entries, and
the metrics and rates it feeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial

from service.core.errors import JudgeError, error_for
from service.core.tasks import CritiqueRow, LabelScores, ScoringTask
from service.engines.base import Engine
from service.observability.metrics import Metrics
from service.scheduling.admission import Throughput
from service.scheduling.background import Background
from service.scheduling.passes import padded_tokens
from service.scheduling.submission import Entry, Priority
from service.scheduling.watchdog import Watchdog

logger = logging.getLogger(__name__)


def fail(entries: Sequence[Entry], error: JudgeError) -> None:
    """Fail every entry not answered yet with ``error``."""
    for entry in entries:
        if not entry.future.done():
            entry.future.set_exception(error)


class Execution:
    """Runs the scheduler's passes. ``skip``: how the scheduler counts an entry given up."""

    def __init__(
        self,
        engine: Engine,
        watchdog: Watchdog,
        metrics: Metrics,
        background: Background,
        skip: Callable[[Entry], None],
    ) -> None:
        self._engine = engine
        self._watchdog = watchdog
        self._metrics = metrics
        self._background = background
        self._skip = skip

    async def run(
        self, entries: list[Entry], critiques: bool, rate: Throughput | None, export_rate: bool = False
    ) -> None:
        """Run ``entries`` as one pass (all of one priority and kind). ``rate``: the online
        throughput the pass feeds (None for batch work); ``export_rate``: whether it is the
        rate the metrics export."""
        started = time.monotonic()
        online = entries[0].priority is Priority.ONLINE
        busy = self._background.recent(started)
        if rate is not None:
            rate.batch_started(started)
        tasks = [entry.task for entry in entries]
        rows = [CritiqueRow(entry.deadline) for entry in entries]
        job = asyncio.current_task()
        finished = False

        def given_up(row: CritiqueRow, _: asyncio.Future[LabelScores]) -> None:
            # The entry's row leaves a running generation before its next step (transformers).
            # When every entry of the pass has been given up, stop waiting for it (vLLM aborts
            # the engine requests; a transformers pass runs out in its thread, unread).
            row.drop()
            if not finished and job is not None and all(e.future.done() for e in entries):
                job.cancel()

        for entry, row in zip(entries, rows, strict=True):
            entry.future.add_done_callback(partial(given_up, row))
        completed = 0
        try:
            if online:
                for entry in entries:
                    self._metrics.queue_wait.observe(started - entry.enqueued)
                self._metrics.batch_size.observe(len(entries))
                self._metrics.batch_tokens.observe(padded_tokens(tasks))
            results = await self._call(tasks, rows, critiques, background=not online)
            if len(results) != len(entries):
                raise RuntimeError(f"engine returned {len(results)} results for {len(entries)} items")
        except BaseException as exc:
            finished = True
            self._failed(entries, rows, critiques, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            finished = True
            completed = self._resolve(entries, rows, results)
        finally:
            ended = time.monotonic()
            if rate is not None:
                self._metrics.inference_duration.observe(ended - started)
                rate.batch_finished(completed, started, ended)
                if export_rate and rate.tokens_per_s is not None:
                    self._metrics.throughput.set(rate.tokens_per_s)
            else:
                self._background.pass_ended(started, ended, busy)

    async def _call(
        self, tasks: list[ScoringTask], rows: list[CritiqueRow], critiques: bool, background: bool
    ) -> Sequence[LabelScores | None]:
        if critiques:
            return await self._watchdog.critique(self._engine, tasks, rows, background=background)
        return await self._watchdog.score(self._engine, tasks, background=background)

    def _failed(self, entries: list[Entry], rows: list[CritiqueRow], critiques: bool, exc: BaseException) -> None:
        # The tokens its generation had produced (what a transformers engine reports).
        self._metrics.generated_tokens.inc(sum(row.tokens for row in rows))
        if not isinstance(exc, asyncio.CancelledError):
            kind = entries[0].priority.name.lower()
            logger.error("a %s pass of %d items failed", kind, len(entries), exc_info=exc)
            self._metrics.batch_failures.inc()
        if critiques:
            # Critiques given up during their generation, whatever then ended the pass.
            for entry in entries:
                if entry.future.done():
                    self._skip(entry)
        fail(entries, error_for(exc))

    def _resolve(self, entries: list[Entry], rows: list[CritiqueRow], results: Sequence[LabelScores | None]) -> int:
        """Hand each entry its result; an entry whose row the engine dropped (None) is counted
        as skipped, with the tokens generated for it. Returns the online tokens completed."""
        completed = 0
        for entry, row, result in zip(entries, rows, results, strict=True):
            online = entry.priority is Priority.ONLINE
            if result is None:
                self._metrics.generated_tokens.inc(row.tokens)
                self._skip(entry)
                continue
            if online:
                completed += entry.task.work
                if result.critique is not None:
                    self._metrics.critiqued(result.critique.tokens)
            if not entry.future.done():
                entry.future.set_result(result)
        if entries and entries[0].priority is Priority.BATCH:
            self._metrics.batch_lane_prompts.inc(len(entries))
        return completed

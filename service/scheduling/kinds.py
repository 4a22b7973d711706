"""One kind of pass in the scheduler (plain scores, or critiques): its waiting entries by
priority, its running passes by priority, its own limit of passes at once, and the online
work admission predicts it from. Critiques are a kind of their own so that a running
generation never holds the slot plain scores need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from service.core.tasks import ScoringTask
from service.scheduling.admission import Throughput
from service.scheduling.passes import nearest_by_length
from service.scheduling.submission import Entry, Priority


@dataclass(slots=True, eq=False)
class Kind:
    name: str
    critiques: bool
    inflight: int
    pending: dict[Priority, list[Entry]] = field(default_factory=lambda: {p: [] for p in Priority})
    running: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    loop_task: asyncio.Task[None] | None = None
    # Admission predicts each kind from its own online work and rate: kinds run side by side,
    # and a generation's tokens come far slower than a prompt's.
    throughput: Throughput = field(default_factory=Throughput)
    # Online tokens admitted and not yet resolved: prompts, and each critique's most it may add.
    work: int = 0
    # Online entries wait for more to arrive (``max_wait_s``) until this instant.
    gather_until: float | None = None

    def free(self, priority: Priority, continuous: bool) -> bool:
        """Whether a pass of ``priority`` has a slot: on an engine of one pass at a time, the
        kind's passes of both priorities share its slots; a continuous engine keeps batch work
        to its background slots (the scheduler counts those) apart from online passes."""
        if continuous:
            return self.running[priority] < self.inflight
        return sum(self.running.values()) < self.inflight

    def take(
        self, priority: Priority, head: int, size: int, fits_pass: Callable[[list[ScoringTask]], bool]
    ) -> list[Entry]:
        """The oldest of the ``head`` oldest waiting entries of ``priority`` and its nearest
        by length, up to ``size``, while the pass fits; they stop waiting."""
        pending = self.pending[priority]
        entries = nearest_by_length(pending[:head], size, fits_pass)
        chosen = {id(e) for e in entries}
        for entry in entries:
            entry.waiting = False
        pending[:] = [e for e in pending if id(e) not in chosen]
        return entries

    def drop_stale(self, now: float, skip: Callable[[Entry], None]) -> None:
        """Entries given up or past their deadline stop waiting (``skip`` counts them)."""
        for entries in self.pending.values():
            stale = [e for e in entries if e.future.done() or e.deadline <= now]
            if stale:
                entries[:] = [e for e in entries if not (e.future.done() or e.deadline <= now)]
                for entry in stale:
                    entry.waiting = False
                    skip(entry)

    def pop_oldest(self) -> Entry | None:
        """The oldest live waiting entry, taken out (a fault of the scheduler fails it, so
        the loop always makes progress)."""
        live = [e for entries in self.pending.values() for e in entries if not e.future.done()]
        if not live:
            return None
        oldest = min(live, key=lambda e: e.enqueued)
        self.pending[oldest.priority].remove(oldest)
        oldest.waiting = False
        return oldest

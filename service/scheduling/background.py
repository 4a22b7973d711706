"""When batch work may take the engine, and how large its passes may be: the rules of the
scheduler's background priority.

Online work goes first. On an engine that runs one pass at a time (transformers), a pass
cannot be interrupted, so batch passes are held back while online work waits or runs, and
until none came within ``ONLINE_GAP_S`` (a client that gets its answer and asks again goes
first). While online work is recent (``RECENT_ONLINE_S``), batch passes shrink to
``busy_items`` items and an eighth of the engine's budget (their size is what an online
request may wait for), and after each such pass the scheduler rests long enough that batch work
takes at most ``BUSY_SHARE`` of the engine: a client with pauses between its requests does
not meet a batch pass at each one. Under online traffic that never pauses, a batch pass
still runs once the rest is over and batch work has waited ``STARVE_S``, so batches move.

An engine that orders its own requests by priority (vLLM) takes batch items as background
requests without waiting for online work to pause: up to its background slots at once, and
``busy_items`` while online work is recent (they share its steps).

Every rule answers at once from the instants it keeps, and says when its answer may change
next, so the scheduler sleeps until then or until something happens: it never polls.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.scheduling.passes import PassLimits

# Online work seen this recently keeps batch passes small.
RECENT_ONLINE_S = 2.0
# Batch lines that keep arriving (a chunk's lines, each prepared in turn) are gathered for a
# pass until none came for this long or a full pass waits.
GATHER_S = 0.02
# After online work ends, batch work waits this long for more before it takes the engine.
ONLINE_GAP_S = 0.05
# The longest batch work defers to online work, its rest over: then one batch pass runs.
STARVE_S = 1.0
# The most of the engine's time batch passes take while online work is recent.
BUSY_SHARE = 0.25
# While online work is recent, a batch pass costs at most this part of the engine's budget.
BUSY_BUDGET_PART = 8
# ... and holds at most this part of the largest pass's items.
BUSY_ITEMS_PART = 8


@dataclass(frozen=True, slots=True)
class PassShape:
    """How large the next batch pass may be: items, and cost in the engine's unit."""

    size: int
    budget: int


class Background:
    """The instants the background rules keep, and their answers."""

    def __init__(self, limits: PassLimits, max_batch_size: int) -> None:
        self.limits = limits
        self.max_batch_size = max_batch_size
        self.busy_items = max(1, max_batch_size // BUSY_ITEMS_PART)
        self.online_seen = float("-inf")
        self.arrived = float("-inf")
        # While online work is recent, no batch pass starts before this (its share's rest).
        self.rest_until = float("-inf")
        # Since when batch work has been held back (None: it is not).
        self.deferred_since: float | None = None

    def online(self, now: float) -> None:
        """Online work is waiting or running now."""
        self.online_seen = now

    def recent(self, now: float) -> bool:
        return now - self.online_seen < RECENT_ONLINE_S

    def gathered(self, now: float, waiting: int) -> float | None:
        """None once lines stopped arriving or a full pass waits; else when to look again."""
        if waiting >= self.max_batch_size or now - self.arrived >= GATHER_S:
            return None
        return self.arrived + GATHER_S

    def shape(self, now: float) -> PassShape:
        if self.recent(now):
            return PassShape(min(self.busy_items, self.max_batch_size), max(1, self.limits.budget // BUSY_BUDGET_PART))
        return PassShape(self.max_batch_size, self.limits.budget)

    def slots(self, now: float) -> int:
        """A continuous engine: the batch items it may hold at once now."""
        slots = self.limits.background_slots
        return min(self.busy_items, slots) if self.recent(now) else slots

    def turn(self, now: float, online_busy: bool) -> float | None:
        """A one-pass-at-a-time engine with its slot free: None when a batch pass may start
        now, else the instant the answer may change (online work arriving or ending wakes
        the scheduler sooner)."""
        if online_busy:
            self.online_seen = now
        if self.deferred_since is None:
            self.deferred_since = now
        if now < self.rest_until and self.recent(now):
            return min(self.rest_until, self.online_seen + RECENT_ONLINE_S)
        starve_at = self.deferred_since + STARVE_S
        if now >= starve_at:
            return None
        if not online_busy and now - self.online_seen >= ONLINE_GAP_S:
            return None
        return starve_at if online_busy else min(starve_at, self.online_seen + ONLINE_GAP_S)

    def pass_started(self) -> None:
        self.deferred_since = None

    def pass_ended(self, started: float, ended: float, busy: bool) -> None:
        """After a pass that began while online work was recent (``busy``), rest ``1 /
        BUSY_SHARE - 1`` times its length: the share is of the time online work is recent.
        A pass that began on an idle engine took nothing from online work."""
        if busy:
            self.rest_until = ended + (ended - started) * (1 / BUSY_SHARE - 1)

"""What one engine pass may hold, and how a pass is formed: the scheduler's policy over an
engine's capabilities.

An engine prices a pass twice: in the unit of its compute budget (``batch_cost``: padded
tokens on transformers, items on vLLM) and in the bytes its passes hold (``batch_memory``:
rows x width x per-token KV bytes, label-trie nodes and activations included). A pass fits
when both are within their budgets. No prompt over the memory budget ever reaches the
scheduler: ``WorkLimits.check_memory`` refuses it (422) before any work, online or batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.core.tasks import ScoringTask
from service.engines.base import Engine, EngineCapabilities
from service.scheduling.submission import Entry


@dataclass(frozen=True, slots=True)
class PassLimits:
    """How the scheduler uses one engine: its budgets, and how many passes run at once."""

    # The most cost (the engine's unit) one pass may carry.
    budget: int
    # The most bytes one pass may hold (the memory plan's).
    memory_budget: int
    # Passes of each kind (plain scores; critiques) that may run at once: one for an engine
    # that runs one forward pass at a time, as many as the queue holds for one that batches
    # continuously by itself.
    inflight: int
    critique_inflight: int
    # Background (batch) items a continuous engine may hold at once, behind online work in
    # its own priority order: half its sequence slots, so that online requests always find
    # one (it never preempts for a slot). 0: an engine that runs passes in the order it gets
    # them, where the scheduler holds background passes back itself.
    background_slots: int

    @classmethod
    def of(cls, capabilities: EngineCapabilities, max_queue: int, memory_budget: int = 1 << 62) -> PassLimits:
        if capabilities.continuous:
            slots = max(1, capabilities.sequence_slots // 2)
            return cls(capabilities.pass_budget, memory_budget, max_queue, max_queue, slots)
        return cls(capabilities.pass_budget, memory_budget, 1, 1, 0)

    @property
    def continuous(self) -> bool:
        return self.background_slots > 0


def fits(engine: Engine, limits: PassLimits, batch: Sequence[ScoringTask], budget: int | None = None) -> bool:
    """Whether ``batch`` is within the compute budget (or ``budget``, a smaller one) and the
    memory budget."""
    cost = engine.batch_cost(batch)
    within = cost <= (limits.budget if budget is None else budget)
    return within and engine.batch_memory(batch, cost) <= limits.memory_budget


def nearest_by_length(head: Sequence[Entry], size: int, fits_pass: Callable[[list[ScoringTask]], bool]) -> list[Entry]:
    """The oldest entry of ``head`` and its nearest neighbours by length, up to ``size``,
    while the pass fits; nearest first, so the first neighbour that does not fit ends the
    pass. The oldest always runs: alone it is within the memory budget (checked before it
    was queued), and over the compute budget it runs alone."""
    ordered = sorted(head, key=lambda e: e.task.length)
    anchor = min(range(len(ordered)), key=lambda i: ordered[i].enqueued)
    lo, hi = anchor, anchor + 1
    target = ordered[anchor].task.length
    while hi - lo < size:
        left = ordered[lo - 1] if lo > 0 else None
        right = ordered[hi] if hi < len(ordered) else None
        if left is None and right is None:
            break
        take_left = right is None or (left is not None and target - left.task.length <= right.task.length - target)
        candidate = ordered[lo - 1 : hi] if take_left else ordered[lo : hi + 1]
        if not fits_pass([e.task for e in candidate]):
            break
        lo, hi = (lo - 1, hi) if take_left else (lo, hi + 1)
    return ordered[lo:hi]


def padded_tokens(tasks: Sequence[ScoringTask]) -> int:
    """The tokens of ``tasks`` padded to the longest (the batch-tokens metric)."""
    return max(task.length for task in tasks) * len(tasks) if tasks else 0

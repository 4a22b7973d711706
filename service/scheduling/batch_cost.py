"""What a batch costs the engine, and whether a batch fits: the two budgets the queue
forms batches within.

An engine prices a batch twice: in the unit of its compute budget (``batch_cost``:
padded tokens on transformers, items on vLLM) and in the bytes its passes hold
(``batch_memory``: rows x width x per-token KV bytes, label-trie nodes and activations
included). A batch fits when both are within their budgets; a single item always runs
(``Limits.check_memory`` has refused, before any work, an item that cannot fit alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from service.core.tasks import CritiqueRow, LabelScores, ScoringTask


class BatchEngine(Protocol):
    """What the queue needs of an engine."""

    batch_budget: int
    batch_memory_budget: int
    max_inflight_batches: int
    max_inflight_critiques: int
    # How many background items (the batch lane's) the engine schedules itself behind
    # online work, at once; 0 when it runs passes in the order it gets them.
    background_slots: int

    def batch_cost(self, batch: Sequence[ScoringTask]) -> int: ...

    def batch_memory(self, batch: Sequence[ScoringTask], cost: int) -> int: ...

    async def score(self, batch: Sequence[ScoringTask], *, background: bool = False) -> Sequence[LabelScores]: ...

    async def critique(
        self, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow], *, background: bool = False
    ) -> Sequence[LabelScores | None]: ...


def fits(engine: BatchEngine, batch: Sequence[ScoringTask], budget: int | None = None) -> bool:
    """Whether ``batch`` is within the engine's compute budget (or ``budget``, a smaller
    one) and its memory budget."""
    cost = engine.batch_cost(batch)
    within = cost <= (engine.batch_budget if budget is None else budget)
    return within and engine.batch_memory(batch, cost) <= engine.batch_memory_budget


def padded_tokens(tasks: Sequence[ScoringTask]) -> int:
    """The tokens of ``tasks`` padded to the longest (the batch-tokens metric)."""
    return max(task.length for task in tasks) * len(tasks) if tasks else 0

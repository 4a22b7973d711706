"""The engine boundary, in two parts: what an engine is (``EngineCapabilities``, fixed once
it has started and returned by ``start``) and what it does (the ``Engine`` protocol's
operations).

How many passes run at once, how background work is held back and how much a pass may
hold are the scheduler's policy (``service.scheduling.passes``), decided from the
capabilities; the engine only states them. The tasks and results it speaks are
``service.core.tasks``; its errors are in ``service.core.errors``. Nothing here imports
torch or vLLM, so the scheduler stays framework-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.core.tasks import CritiqueRow, LabelScores, ScoringTask


@dataclass(frozen=True, slots=True)
class EngineCapabilities:
    """What a started engine is."""

    max_model_len: int
    # Decoder layers; layer_logits has num_layers + 1 rows (embeddings first).
    num_layers: int
    # Why tasks may not ask for per-layer label logits (LAGER) or hidden rows; None: they may.
    layers_unavailable: str | None
    # The most cost (``Engine.batch_cost``'s unit: padded tokens, items...) one pass may carry.
    pass_budget: int
    # Whether the engine steps many requests itself (continuous batching: each item is a pass
    # of its own, many at once, ordered by priority) rather than one forward pass at a time.
    continuous: bool = False
    # Continuous engines: the sequences one engine step holds at most.
    sequence_slots: int = 0

    @property
    def supports_layers(self) -> bool:
        return self.layers_unavailable is None


class Engine(Protocol):
    """A judge model that scores batches of tasks."""

    async def start(self) -> EngineCapabilities:
        """Load the model, warm it up, and say what it is."""

    def batch_cost(self, batch: Sequence[ScoringTask]) -> int:
        """What running ``batch`` costs, in the unit of ``pass_budget`` (padded tokens, items...)."""

    def batch_memory(self, batch: Sequence[ScoringTask], cost: int) -> int:
        """Bytes ``batch``'s passes hold at their peak (``cost``: its ``batch_cost``); 0 for an
        engine that holds its cache itself."""

    def limit_pass_memory(self, budget: int) -> None:
        """The bytes one pass may hold (the memory plan's, once the model is warm): an engine
        that splits a pass's work by memory (label-trie nodes) plans within it."""

    async def score(self, batch: Sequence[ScoringTask], *, background: bool = False) -> Sequence[LabelScores]:
        """Score a batch; one result per task, in order. ``background`` work (batch jobs')
        goes behind online work where the engine schedules its own requests."""

    async def critique(
        self, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow], *, background: bool = False
    ) -> Sequence[LabelScores | None]:
        """Generate each task's critique, then read its labels after it; one result per
        task, in order (``background`` as for ``score``). ``rows`` holds each task's drop
        signal: an engine that can drop one row of a running batch returns None for a row
        that was dropped or whose deadline passed (else it may ignore them). Cancelling the
        call stops the generation."""

    async def probe(self) -> None:
        """Answer a tiny pass that touches nothing cached or counted: the watchdog's check
        that an engine nobody is waiting on still steps."""

    async def reset_prefix_cache(self) -> None:
        """Forget every cached prompt prefix (after the start-up calibration)."""

    async def close(self) -> None:
        """Release the model."""

    @property
    def healthy(self) -> bool:
        """False once the engine is dead for good."""

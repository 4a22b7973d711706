"""The engine boundary: the Engine protocol every engine implements.

The tasks and results it speaks are ``service.core.tasks``; its errors are in
``service.core.errors``. Nothing here imports torch or vLLM, so the queue stays
framework-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from service.core.tasks import CritiqueRow, LabelScores, ScoringTask


class Engine(Protocol):
    """A loaded judge model that scores batches of tasks."""

    name: str
    max_model_len: int
    # Decoder layers; layer_logits has num_layers + 1 rows (embeddings first).
    num_layers: int
    # Whether tasks may ask for per-layer label logits (LAGER), and if not, why.
    supports_layers: bool
    layers_unavailable: str | None
    # The most cost (see batch_cost) one batch may carry.
    batch_budget: int
    # The most bytes (see batch_memory) one batch's passes may hold.
    batch_memory_budget: int
    # How many batches the queue may have running at once: 1 for an engine that runs one
    # forward pass at a time, many for one that batches continuously by itself.
    max_inflight_batches: int
    # How many critique batches (generations) may run at once, apart from plain batches.
    max_inflight_critiques: int
    # How many background items (the batch lane's) the engine may hold at once, scheduling
    # them itself behind online work; 0 for an engine that runs passes in the order it
    # gets them (the lane then holds its passes back while online work runs).
    background_slots: int

    def batch_cost(self, batch: Sequence[ScoringTask]) -> int:
        """What running ``batch`` costs, in the unit of ``batch_budget`` (padded tokens, items...)."""

    def batch_memory(self, batch: Sequence[ScoringTask], cost: int) -> int:
        """Bytes ``batch``'s passes hold at their peak (``cost``: its ``batch_cost``), in the
        unit of ``batch_memory_budget``; 0 for an engine that holds its cache itself."""

    async def start(self) -> None:
        """Load the model and warm it up."""

    async def score(self, batch: Sequence[ScoringTask], *, background: bool = False) -> Sequence[LabelScores]:
        """Score a batch; one result per task, in order. ``background`` work (the batch
        lane's) goes behind online work where the engine schedules its own requests."""

    async def critique(
        self, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow], *, background: bool = False
    ) -> Sequence[LabelScores | None]:
        """Generate each task's critique, then read its labels after it; one result per
        task, in order (``background`` as for ``score``). ``rows`` holds each task's drop
        signal: an engine that can drop one row of a running batch returns None for a row
        that was dropped or whose deadline passed (else it may ignore them). Cancelling the
        call stops the generation."""

    async def reset_prefix_cache(self) -> None:
        """Forget every cached prompt prefix (after the start-up calibration)."""

    async def close(self) -> None:
        """Release the model."""

    @property
    def healthy(self) -> bool:
        """False once the engine is dead for good."""

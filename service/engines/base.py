"""The engine boundary: frozen domain types and the Engine protocol.

Nothing here imports torch or vLLM, so the queue and routes stay framework-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ScoringTask:
    """One prompt to score: its token ids and the label token ids to read after it."""

    token_ids: tuple[int, ...]
    label_ids: tuple[int, ...]
    want_layers: bool = False

    @property
    def length(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class LabelScores:
    """What an engine returns for one task.

    ``logprobs``: log-softmax over the full vocabulary, at the label ids, at the scoring
    position. ``layer_logits``: when asked for, the label logits of every layer's
    last-token hidden state projected through the LM head and the family's logit transform
    without the final norm (the first layer's input first, the model's own final-normed
    output last). ``layer_logits_normed``: the same, but every row except the last goes
    through the final norm first (the logit lens).
    """

    logprobs: tuple[float, ...]
    layer_logits: tuple[tuple[float, ...], ...] | None = None
    layer_logits_normed: tuple[tuple[float, ...], ...] | None = None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` start with in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class EngineError(Exception):
    """The engine failed a batch."""


class EngineDead(EngineError):
    """The engine can no longer serve; the process should be restarted."""


class UnsupportedModel(EngineError):
    """The engine cannot serve this model's scores exactly; it refuses to load it."""


class Engine(Protocol):
    """A loaded judge model that scores batches of tasks."""

    name: str
    max_model_len: int
    # Decoder layers; layer_logits has num_layers + 1 rows (embeddings first).
    num_layers: int
    # Whether the queue should send batches concurrently (the engine batches itself).
    concurrent_batches: bool
    # Whether tasks may ask for per-layer label logits (LAGER), and if not, why.
    supports_layers: bool
    layers_unavailable: str | None
    # The batch token budget that runs fastest on this engine's device.
    preferred_batch_tokens: int

    async def start(self) -> None:
        """Load the model and warm it up."""

    async def score(self, batch: Sequence[ScoringTask]) -> Sequence[LabelScores]:
        """Score a batch; one result per task, in order."""

    async def close(self) -> None:
        """Release the model."""

    @property
    def shared_prefix_min(self) -> int:
        """A prefix shared by a whole batch, when at least this long, is computed once (0: never)."""

    @property
    def healthy(self) -> bool:
        """False once the engine is dead for good."""

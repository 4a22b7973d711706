"""The engine boundary: frozen domain types and the Engine protocol.

Nothing here imports torch or vLLM, so the queue and routes stay framework-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.labels import LabelTrie


@dataclass(frozen=True, slots=True)
class ScoringTask:
    """One prompt to score: its token ids and the label token ids to read after it.

    ``label_ids`` are the tokens read at the prompt's last position. When some label is
    more than one token, ``trie`` holds every label's token sequence (``label_ids`` are
    then its root's children, the labels' first tokens) and the engine also reads each
    trie node past the root (see ``service.labels``).

    ``hidden_layers``: hidden-state entries (0 = embeddings, ``num_layers`` = the final
    normed output) whose scoring-position rows the engine returns, for learned readouts.
    The scoring position is the prompt's last token, whatever the labels' lengths.
    """

    token_ids: tuple[int, ...]
    label_ids: tuple[int, ...]
    want_layers: bool = False
    trie: LabelTrie | None = None
    hidden_layers: tuple[int, ...] = ()

    @classmethod
    def reading(
        cls,
        token_ids: tuple[int, ...],
        trie: LabelTrie,
        want_layers: bool = False,
        hidden_layers: tuple[int, ...] = (),
    ) -> ScoringTask:
        """A task that reads ``trie``'s labels after ``token_ids``."""
        return cls(token_ids, trie.root_ids, want_layers, None if trie.single_token else trie, hidden_layers)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    def label_logprobs(self, node_logprobs: Sequence[Sequence[float]]) -> tuple[float, ...]:
        """Each label's log-probability from the root's row (over ``label_ids``) and, with
        a trie, one row per continuation node."""
        if self.trie is None:
            return tuple(node_logprobs[0])
        return self.trie.label_logprobs(node_logprobs)


@dataclass(frozen=True, slots=True)
class LabelScores:
    """What an engine returns for one task.

    ``logprobs``: log-softmax over the full vocabulary, at the label ids, at the scoring
    position. ``layer_logits``: when asked for, the label logits of every layer's
    last-token hidden state projected through the LM head and the family's logit transform
    without the final norm (the first layer's input first, the model's own final-normed
    output last). ``layer_logits_normed``: the same, but every row except the last goes
    through the final norm first (the logit lens).
    ``hidden``: the scoring-position hidden state of each of the task's ``hidden_layers``,
    in that order (None when it asked for none).
    """

    logprobs: tuple[float, ...]
    layer_logits: tuple[tuple[float, ...], ...] | None = None
    layer_logits_normed: tuple[tuple[float, ...], ...] | None = None
    hidden: tuple[tuple[float, ...], ...] | None = None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` start with in common.

    A binary search over slice comparisons: the queue calls this while it forms every
    batch, and slices compare at C speed where a token-by-token loop would not.
    """
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


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
    # Whether tasks may ask for per-layer label logits (LAGER), and if not, why.
    supports_layers: bool
    layers_unavailable: str | None
    # The most cost (see batch_cost) one batch may carry.
    batch_budget: int
    # How many batches the queue may have running at once: 1 for an engine that runs one
    # forward pass at a time, many for one that batches continuously by itself.
    max_inflight_batches: int

    def batch_cost(self, batch: Sequence[ScoringTask]) -> int:
        """What running ``batch`` costs, in the unit of ``batch_budget`` (padded tokens, items...)."""

    async def start(self) -> None:
        """Load the model and warm it up."""

    async def score(self, batch: Sequence[ScoringTask]) -> Sequence[LabelScores]:
        """Score a batch; one result per task, in order."""

    async def close(self) -> None:
        """Release the model."""

    @property
    def healthy(self) -> bool:
        """False once the engine is dead for good."""

"""The typed queue boundary: what a request asks of an engine (``ScoringTask``) and what it
gets back (``LabelScores``), with the critique types that travel between them.

Frozen dataclasses without torch, vLLM or FastAPI, so the queue, the engines and the
services all speak them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.core.labels import LabelTrie


@dataclass(frozen=True, slots=True)
class Critique:
    """Critique mode: generate greedily after the prompt, then read the labels.

    Generation stops at the first generated token at which the decoded text contains
    ``marker``, after ``max_tokens`` tokens, or at end of sequence. ``marker_ids`` (the
    marker tokenised alone) are appended before the read when the marker never appeared.
    """

    max_tokens: int
    marker: str
    marker_ids: tuple[int, ...]

    @property
    def room(self) -> int:
        """The most tokens the critique adds to the prompt before the read."""
        return self.max_tokens + len(self.marker_ids)


@dataclass(frozen=True, slots=True)
class CritiqueOutcome:
    """What a critique generated: its text (marker included), whether the marker came,
    and how many tokens were generated (end of sequence not counted)."""

    text: str
    marker_found: bool
    tokens: int


class CritiqueRow:
    """One row of a critique batch, shared by the queue (on the event loop) and the engine
    (in its generation thread): the queue drops the row when its request gives it up, the
    engine stops generating for a row that is dropped or past its deadline before its
    next step, and records how many tokens it generated for the row.

    The one mutable object that crosses the queue, and thread-safe by construction: the
    drop is a ``threading.Event``; ``tokens`` is written by the engine's thread only and
    read by the queue once the engine call has ended.
    """

    __slots__ = ("_dropped", "deadline", "tokens")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # a ``time.monotonic()`` instant, as the queue's
        self._dropped = threading.Event()
        self.tokens = 0

    def drop(self) -> None:
        self._dropped.set()

    def wanted(self) -> bool:
        """Whether the row's result will still be read: not dropped, deadline not passed."""
        return not self._dropped.is_set() and time.monotonic() < self.deadline


@dataclass(frozen=True, slots=True)
class ScoringTask:
    """One prompt to score: its token ids and the label token ids to read after it.

    ``label_ids`` are the tokens read at the prompt's last position. When some label is
    more than one token, ``trie`` holds every label's token sequence (``label_ids`` are
    then its root's children, the labels' first tokens) and the engine also reads each
    trie node past the root (see ``service.core.labels``).

    ``hidden_layers``: hidden-state entries (0 = embeddings, ``num_layers`` = the final
    normed output) whose scoring-position rows the engine returns, for learned readouts.
    The scoring position is the prompt's last token, whatever the labels' lengths.
    """

    token_ids: tuple[int, ...]
    label_ids: tuple[int, ...]
    want_layers: bool = False
    trie: LabelTrie | None = None
    hidden_layers: tuple[int, ...] = ()
    # Critique mode: the labels are read after a generated critique, not after the prompt.
    critique: Critique | None = None

    @classmethod
    def reading(
        cls,
        token_ids: tuple[int, ...],
        trie: LabelTrie,
        want_layers: bool = False,
        hidden_layers: tuple[int, ...] = (),
        critique: Critique | None = None,
    ) -> ScoringTask:
        """A task that reads ``trie``'s labels after ``token_ids`` (after its critique, with one)."""
        return cls(token_ids, trie.root_ids, want_layers, None if trie.single_token else trie, hidden_layers, critique)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def per_layer(self) -> bool:
        """Whether the engine must capture the layers: their label logits or hidden rows."""
        return self.want_layers or bool(self.hidden_layers)

    @property
    def cost(self) -> int:
        """Tokens the task may run through the model: the prompt, and with a critique the
        most it may generate and append."""
        return self.length + (self.critique.room if self.critique is not None else 0)

    @property
    def work(self) -> int:
        """Tokens the engine computes for the task, the unit admission and the watchdog
        predict time in: its cost, plus every label-trie node's tokens, each run on a copy
        of the prompt's cache (32 labels of many tokens can be most of a request's work)."""
        if self.trie is None:
            return self.cost
        return self.cost + sum(len(node) for node in self.trie.continuations())

    def after(self, generated: Sequence[int], marker_found: bool) -> ScoringTask:
        """The plain read that follows this task's critique: the prompt, the generated
        tokens, and the marker's tokens when it never appeared."""
        assert self.critique is not None
        added = tuple(generated) + (() if marker_found else self.critique.marker_ids)
        return ScoringTask(self.token_ids + added, self.label_ids, trie=self.trie)

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
    in that order (None when it asked for none). ``critique``: in critique mode, what was
    generated before the scoring position.
    """

    logprobs: tuple[float, ...]
    layer_logits: tuple[tuple[float, ...], ...] | None = None
    layer_logits_normed: tuple[tuple[float, ...], ...] | None = None
    hidden: tuple[tuple[float, ...], ...] | None = None
    critique: CritiqueOutcome | None = None


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

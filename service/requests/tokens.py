"""What the loaded model's tokenizer makes of a request, within the model's length: the
labels as a trie, a critique's marker, and every rendered prompt. Each check raises a
``JudgeError`` naming the label or the item."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.core.errors import ErrorKind, JudgeError
from service.core.labels import LabelTrie
from service.core.tasks import Critique


@dataclass(frozen=True)
class TokenLimits:
    """The loaded model's tokenizer and the longest prompt it serves."""

    tokenizer: Any
    max_model_len: int

    def _tokens(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def label_trie(self, labels: Sequence[str], wants_layers: bool = False) -> LabelTrie:
        """Each label tokenised alone, without special tokens, as a trie. Labels of more
        than one token are served exactly (``service.core.labels``), but not per layer."""
        sequences: dict[tuple[int, ...], str] = {}
        for label in labels:
            tokens = self._tokens(label)
            if not tokens:
                raise JudgeError(
                    ErrorKind.INVALID_REQUEST, f"label {label!r} encodes to no tokens", {"label": label, "tokens": 0}
                )
            if tokens in sequences:
                other = sequences[tokens]
                raise JudgeError(
                    ErrorKind.INVALID_REQUEST,
                    f"labels {other!r} and {label!r} are the same tokens for this model's tokenizer",
                    {"labels": [other, label], "token_ids": list(tokens)},
                )
            sequences[tokens] = label
        trie = LabelTrie.build(list(sequences))
        if wants_layers and not trie.single_token:
            longest = max(labels, key=lambda label: len(self._tokens(label)))
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"label {longest!r} is more than one token for this model's tokenizer; the per-layer methods "
                "(lager, lager_weighted, return_layers) need single-token labels",
                {"label": longest},
            )
        return trie

    def marker_ids(self, marker: str) -> tuple[int, ...]:
        """A critique marker's tokens: the labels are read after them."""
        marker_ids = self._tokens(marker)
        if not marker_ids:
            raise JudgeError(ErrorKind.INVALID_REQUEST, f"critique.marker {marker!r} encodes to no tokens")
        return marker_ids

    def encode(self, text: str, index: int, name: str, critique: Critique | None = None) -> tuple[int, ...]:
        """A rendered prompt's token ids, within the model's length (with room for the
        critique's tokens and its marker's)."""
        token_ids = self._tokens(text)
        if not token_ids:
            raise JudgeError(ErrorKind.INVALID_REQUEST, f"items[{index}] encodes to no tokens")
        if critique is not None and len(token_ids) + critique.room > self.max_model_len:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"items[{index}] ({name!r}) is {len(token_ids)} tokens; with its critique's {critique.max_tokens} "
                f"and the marker's {len(critique.marker_ids)} it exceeds the model's {self.max_model_len}",
                {
                    "item": index,
                    "prompt_tokens": len(token_ids),
                    "critique_tokens": critique.room,
                    "max_model_len": self.max_model_len,
                },
            )
        if len(token_ids) > self.max_model_len:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"items[{index}] ({name!r}) is {len(token_ids)} tokens; the model accepts at most {self.max_model_len}",
                {"item": index, "prompt_tokens": len(token_ids), "max_model_len": self.max_model_len},
            )
        return token_ids

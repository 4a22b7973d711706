"""Every deployment limit, checked in one place before anything is queued.

The wire models (``judge_client.protocol``) carry the structural rules; what depends on
the deployment is here: items per request, what the loaded tokenizer makes of a label,
prompt length against the model (with room for a critique), the critique's length, the
methods the engine and the layer weights allow, and the deadline cap. Each check raises
a ``JudgeError`` naming the field or label, so a bad request is refused whole and nothing
downstream validates again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from service.engines.base import Critique
from service.errors import ErrorKind, JudgeError
from service.labels import LabelTrie
from service.lager import LayerWeights


class Limits:
    """The limits of one loaded judge."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_items: int,
        max_model_len: int,
        max_critique_tokens: int,
        engine_kind: str,
        supports_layers: bool,
        layers_unavailable: str | None,
        layer_weights: LayerWeights | None,
        request_timeout_s: float,
        max_request_timeout_s: float,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_items = max_items
        self.max_model_len = max_model_len
        self.max_critique_tokens = max_critique_tokens
        self.engine_kind = engine_kind
        self.supports_layers = supports_layers
        self.layers_unavailable = layers_unavailable
        self.layer_weights = layer_weights
        self.request_timeout_s = request_timeout_s
        self.max_request_timeout_s = max_request_timeout_s

    @staticmethod
    def check_layer_weights(weights: LayerWeights, source: object, num_layers: int) -> None:
        """At startup: the weights file must fit the loaded model."""
        if len(weights.weights) != num_layers:
            raise ValueError(
                f"{source} has {len(weights.weights)} layer weights; the model needs {num_layers} "
                "(one per layer entry but the final normed one)"
            )

    def deadline(self, timeout_s: float | None, arrived: float | None = None) -> float:
        """The ``time.monotonic()`` instant by which a request that reached the server at
        ``arrived`` (default: now) must be answered."""
        timeout = min(timeout_s or self.request_timeout_s, self.max_request_timeout_s)
        return (time.monotonic() if arrived is None else arrived) + timeout

    def check_count(self, count: int, what: str) -> None:
        if count > self.max_items:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"{count} {what} exceed the limit of {self.max_items} per request",
                {what: count, "max_items": self.max_items},
            )

    def wants_layers(self, method: str, return_layers: bool) -> bool:
        """Whether a score request needs per-layer logits; refuses what this judge cannot serve."""
        if method == "lager_weighted" and self.layer_weights is None:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                "method 'lager_weighted' needs layer weights; the server has none (JUDGE_LAYER_WEIGHTS_FILE)",
            )
        wanted = method != "final" or return_layers
        if wanted and not self.supports_layers:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"method {method!r} and return_layers need per-layer scores, "
                f"which this {self.engine_kind} engine does not provide"
                + (f" ({self.layers_unavailable})" if self.layers_unavailable else ""),
            )
        return wanted

    def critique(self, max_tokens: int, marker: str, wants_layers: bool) -> Critique:
        """Critique mode within this deployment's limits. The per-layer methods read the
        layers at the prompt's last position, which a critique moves: they are refused."""
        if wants_layers:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                "critique mode reads the final distribution only; the per-layer methods "
                "(lager, lager_weighted, return_layers) cannot be combined with it",
                {"field": "critique"},
            )
        if max_tokens > self.max_critique_tokens:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"critique.max_tokens is {max_tokens}; this server generates at most {self.max_critique_tokens}",
                {"max_tokens": max_tokens, "max_critique_tokens": self.max_critique_tokens},
            )
        marker_ids = tuple(self.tokenizer.encode(marker, add_special_tokens=False))
        if not marker_ids:
            raise JudgeError(ErrorKind.INVALID_REQUEST, f"critique.marker {marker!r} encodes to no tokens")
        return Critique(max_tokens, marker, marker_ids)

    def label_trie(self, labels: Sequence[str], wants_layers: bool = False) -> LabelTrie:
        """Each label tokenised alone, without special tokens, as a trie. Labels of more
        than one token are served exactly (``service.labels``), but not per layer."""
        sequences: dict[tuple[int, ...], str] = {}
        for label in labels:
            tokens = tuple(self.tokenizer.encode(label, add_special_tokens=False))
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
            longest = max(labels, key=lambda label: len(self.tokenizer.encode(label, add_special_tokens=False)))
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"label {longest!r} is more than one token for this model's tokenizer; the per-layer methods "
                "(lager, lager_weighted, return_layers) need single-token labels",
                {"label": longest},
            )
        return trie

    def encode(self, text: str, index: int, name: str, critique: Critique | None = None) -> tuple[int, ...]:
        """A rendered prompt's token ids, within the model's length (with room for the
        critique's tokens and its marker's)."""
        token_ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
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

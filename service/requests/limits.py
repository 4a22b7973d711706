"""Every deployment limit, checked in one place before anything is queued.

The wire models (``judge_client.protocol``) carry the structural rules; what depends on
the deployment is here: items, criteria and candidates per request, prompts against the
queue, what the loaded tokenizer makes of a label, prompt length against the model (with
room for a critique), the critique's length, the methods the engine, the layer weights and
the probe allow, the hidden-state entries the model has, and the deadline cap. Each check
raises a ``JudgeError`` naming the field or label, so a bad request is refused whole and
nothing downstream validates again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from service.core.errors import ErrorKind, JudgeError
from service.core.labels import LabelTrie
from service.core.tasks import Critique, ScoringTask
from service.methods.lager import LayerWeights
from service.methods.probe import Probe
from service.requests.readouts import reads_layer_logits, reads_per_layer
from service.scheduling.batch_cost import BatchEngine


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
        num_layers: int = 0,
        probe: Probe | None = None,
        max_criteria: int = 8,
        max_rank_candidates: int = 16,
        max_queue: int | None = None,
        chat_template_keys: Sequence[str] = (),
        engine: BatchEngine | None = None,
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
        self.num_layers = num_layers
        self.probe = probe
        self.max_criteria = max_criteria
        self.max_rank_candidates = max_rank_candidates
        self.max_queue = max_queue
        self.chat_template_keys = tuple(chat_template_keys)
        self.engine = engine

    def chat_template_kwargs(self, requested: Mapping[str, Any] | None) -> dict[str, Any]:
        """The request's chat-template arguments, if the server allows every key."""
        kwargs = dict(requested or {})
        refused = sorted(set(kwargs) - set(self.chat_template_keys))
        if refused:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"chat_template_kwargs may carry only {list(self.chat_template_keys)} on this server "
                f"(JUDGE_CHAT_TEMPLATE_KWARGS); refused: {refused}",
                {"refused": refused, "allowed": list(self.chat_template_keys)},
            )
        return kwargs

    @staticmethod
    def check_layer_weights(weights: LayerWeights, source: object, num_layers: int) -> None:
        """At startup: the weights file must fit the loaded model."""
        if len(weights.weights) != num_layers:
            raise ValueError(
                f"{source} has {len(weights.weights)} layer weights; the model needs {num_layers} "
                "(one per layer entry but the final normed one)"
            )

    @staticmethod
    def check_probe(probe: Probe, source: object, num_layers: int) -> None:
        """At startup: the probe's layers must exist in the loaded model."""
        if any(not 0 <= layer <= num_layers for layer in probe.layers):
            raise ValueError(f"{source} reads hidden-state entries {probe.layers}; the model has 0..{num_layers}")

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

    def check_criteria(self, count: int) -> None:
        if count > self.max_criteria:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"{count} criteria exceed the limit of {self.max_criteria} per request",
                {"criteria": count, "max_criteria": self.max_criteria},
            )

    def check_candidates(self, count: int) -> None:
        if count > self.max_rank_candidates:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"{count} candidates exceed the limit of {self.max_rank_candidates} per request",
                {"candidates": count, "max_rank_candidates": self.max_rank_candidates},
            )

    def check_prompts(self, count: int) -> None:
        """A request's prompts must fit the queue at all, or it could never be admitted."""
        if self.max_queue is not None and count > self.max_queue:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"the request needs {count} prompts; the queue holds at most {self.max_queue}",
                {"prompts": count, "max_queue": self.max_queue},
            )

    def check_memory(self, tasks: Sequence[ScoringTask]) -> None:
        """Every prompt must fit one batch's memory alone (its cache, its activations and its
        label-trie nodes' smallest pass), or it could never run: 422 before any work."""
        if self.engine is None:
            return
        budget = self.engine.batch_memory_budget
        for index, task in enumerate(tasks):
            need = self.engine.batch_memory([task], self.engine.batch_cost([task]))
            if need > budget:
                nodes = len(task.trie.continuations()) if task.trie is not None else 0
                raise JudgeError(
                    ErrorKind.INVALID_REQUEST,
                    f"prompt {index} of the request ({task.cost} tokens, {nodes} multi-token label prefixes) needs "
                    f"{need / 2**20:.0f} MiB to score; one batch may hold at most {budget / 2**20:.0f} MiB on this "
                    "server (JUDGE_MAX_BATCH_MEMORY_MB)",
                    {
                        "prompt": index,
                        "prompt_tokens": task.cost,
                        "label_prefixes": nodes,
                        "memory_mb": round(need / 2**20, 1),
                        "max_batch_memory_mb": round(budget / 2**20, 1),
                    },
                )

    def wants_layers(self, method: str, return_layers: bool) -> bool:
        """Whether a score request needs per-layer logits; refuses what this judge cannot serve."""
        if method == "lager_weighted" and self.layer_weights is None:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                "method 'lager_weighted' needs layer weights; the server has none (JUDGE_LAYER_WEIGHTS_FILE)",
            )
        if method == "probe" and self.probe is None:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST, "method 'probe' needs a probe; the server has none (JUDGE_PROBE_FILE)"
            )
        if reads_per_layer(method, return_layers) and not self.supports_layers:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"method {method!r} and return_layers need per-layer scores, "
                f"which this {self.engine_kind} engine does not provide"
                + (f" ({self.layers_unavailable})" if self.layers_unavailable else ""),
            )
        return reads_layer_logits(method, return_layers)

    def hidden_layers(self, method: str, requested: Sequence[int] | None) -> tuple[int, ...]:
        """The hidden-state entries a score request reads: those it asks for, then the probe's."""
        wanted = list(requested or ())
        for layer in wanted:
            if layer > self.num_layers:
                raise JudgeError(
                    ErrorKind.INVALID_REQUEST,
                    f"hidden layer {layer} is out of range; this model has entries 0..{self.num_layers}",
                    {"hidden_layer": layer, "max_hidden_layer": self.num_layers},
                )
        if method == "probe" and self.probe is not None:
            wanted += [layer for layer in self.probe.layers if layer not in wanted]
        if wanted and not self.supports_layers:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"hidden_layers and method 'probe' need per-layer capture, which this {self.engine_kind} engine "
                "does not provide" + (f" ({self.layers_unavailable})" if self.layers_unavailable else ""),
            )
        return tuple(wanted)

    def check_probe_fits(self, model: str, labels: Sequence[str], prompt_version: str) -> None:
        """A probe serves only the setup it was fitted for."""
        assert self.probe is not None
        reason = self.probe.mismatch(model, labels, prompt_version)
        if reason is not None:
            raise JudgeError(ErrorKind.INVALID_REQUEST, f"method 'probe' cannot serve this request: {reason}")

    def critique(self, max_tokens: int, marker: str, wants_layers: bool) -> Critique:
        """Critique mode within this deployment's limits. The per-layer methods read the
        layers at the prompt's last position, which a critique moves: they are refused."""
        if wants_layers:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                "critique mode reads the final distribution only; the per-layer methods "
                "(lager, lager_weighted, return_layers), the probe and hidden_layers cannot be combined with it",
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
        than one token are served exactly (``service.core.labels``), but not per layer."""
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

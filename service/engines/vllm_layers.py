"""Per-layer label logits inside vLLM's worker, for LAGER.

vLLM loads this class as its ``worker_extension_cls``: its methods join the worker and are
called from the front end with ``collective_rpc``. ``judge_install_layer_capture`` wraps
the model runner's forward call and hooks the decoder layers. On every engine step it
finds the requests that asked for layers (``SamplingParams.extra_args["judge_layers"]``,
a key chosen by the front end) whose scoring position, the last prompt token, is in the
step, and keeps that token's hidden state at every layer. Rows come from the step's own
``query_start_loc`` and ``positions``, so each request gets its own row under continuous
batching and chunked prefill; a chunk that does not end the prompt is ignored. Only the
label rows of the LM head are applied (``[layers, hidden] @ [hidden, labels]``), in
float64, raw and after the final norm, like the transformers engine. A request may also
name hidden-state entries (``extra_args["judge_hidden"]``, for the probe): their rows are
kept as they are. The front end then fetches and removes the result by key with
``judge_pop_layer_logits``.

Hooks do not run inside compiled graphs, so the engine runs the model eagerly when this
is installed. With tensor parallelism each rank holds a slice of the vocabulary: it fills
the labels it owns and leaves zeros elsewhere, and the front end sums the ranks' answers.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch

logger = logging.getLogger(__name__)

EXTRA_ARGS_KEY = "judge_layers"
# The hidden-state entries (0 = embeddings, the last = the final normed output) to keep.
HIDDEN_ARGS_KEY = "judge_hidden"
# Results not fetched (their request was aborted at the wrong moment) are dropped beyond this.
MAX_KEPT = 8192

# Per request: raw and final-normed label logits per layer, and the asked-for hidden rows.
LayerLogits = tuple[list[list[float]], list[list[float]], dict[int, list[float]]]


class _Target:
    __slots__ = ("hidden", "key", "label_ids", "row")

    def __init__(self, key: str, row: int, label_ids: list[int], hidden: list[int]) -> None:
        self.key, self.row, self.label_ids, self.hidden = key, row, label_ids, hidden


class LayerCapture:
    """Installs the hooks on one worker's model and keeps results by key."""

    def __init__(self, runner: Any) -> None:
        model = runner.get_model()
        decoder = getattr(model, "model", None)
        layers = getattr(decoder, "layers", None)
        if decoder is None or layers is None or not hasattr(decoder, "norm") or not hasattr(model, "lm_head"):
            raise RuntimeError(f"{type(model).__name__} has no decoder layers, final norm and LM head to read")
        self.runner = runner
        self.norm = decoder.norm
        head = model.lm_head
        shard = getattr(head, "shard_indices", None)
        self.vocab_start = int(shard.org_vocab_start_index) if shard is not None else 0
        self.vocab_end = int(shard.org_vocab_end_index) if shard is not None else int(head.weight.shape[0])
        self.head_weight = head.weight
        bias = getattr(head, "bias", None)
        self.head_bias = bias if isinstance(bias, torch.Tensor) else None
        self.num_layers = len(layers)
        self.results: OrderedDict[str, LayerLogits] = OrderedDict()
        self._rows: torch.Tensor | None = None
        self._states: list[torch.Tensor] = []
        # Tokens per request id of the engine step being run; None outside execute_model,
        # so warm-up and dummy forward passes are never read.
        self._scheduled: dict[str, int] | None = None
        layers[0].register_forward_pre_hook(self._embeddings_hook, with_kwargs=True)
        # Every decoder layer but the last: the model's own output stands for the last one,
        # final norm included, as in transformers' hidden_states.
        for layer in list(layers)[:-1]:
            layer.register_forward_hook(self._layer_hook)
        forward, execute = runner._model_forward, runner.execute_model

        def model_forward(*args: Any, **kwargs: Any) -> Any:
            return self._forward(forward, *args, **kwargs)

        def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            self._scheduled = dict(getattr(scheduler_output, "num_scheduled_tokens", None) or {})
            try:
                return execute(scheduler_output, *args, **kwargs)
            finally:
                self._scheduled = None

        runner._model_forward = model_forward
        runner.execute_model = execute_model

    # -- hooks ---------------------------------------------------------------------------

    def _embeddings_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self._rows is not None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[1]
            self._states.append(hidden[self._rows])

    def _layer_hook(self, module: Any, args: tuple, output: Any) -> None:
        if self._rows is not None:
            if isinstance(output, tuple):
                hidden, residual = output[0], output[1] if len(output) > 1 else None
            else:
                hidden, residual = output, None
            rows = hidden[self._rows]
            self._states.append(rows + residual[self._rows] if residual is not None else rows)

    # -- one engine step -----------------------------------------------------------------

    def _targets(self, positions: torch.Tensor | None) -> list[_Target]:
        runner, scheduled = self.runner, self._scheduled
        if not scheduled:
            return []
        batch = runner.input_batch
        starts = runner.query_start_loc.np
        # Each request that asked, with the position of its last prompt token.
        candidates: list[tuple[_Target, int]] = []
        for index, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
            state = runner.requests.get(req_id)
            params = getattr(state, "sampling_params", None)
            extra = getattr(params, "extra_args", None) or {}
            if params is None or EXTRA_ARGS_KEY not in extra:
                continue
            count = int(starts[index + 1]) - int(starts[index])
            if count != scheduled.get(req_id, 0) or count == 0:
                # Never guess a row: the request then fails alone ("no per-layer logits").
                logger.error("step layout disagrees with the schedule for %s; not capturing its layers", req_id)
                continue
            last_row = int(starts[index + 1]) - 1
            hidden = [int(layer) for layer in extra.get(HIDDEN_ARGS_KEY, ())]
            target = _Target(str(extra[EXTRA_ARGS_KEY]), last_row, list(params.logprob_token_ids or []), hidden)
            candidates.append((target, state.num_prompt_tokens - 1))
        if not candidates or positions is None:
            return []
        rows = torch.tensor([target.row for target, _ in candidates], device=positions.device)
        at = positions[..., rows].reshape(-1, len(candidates))[-1].tolist()
        # Only the chunk that ends the prompt holds the scoring position.
        return [target for (target, end), position in zip(candidates, at, strict=True) if position == end]

    def _forward(self, forward: Any, *args: Any, **kwargs: Any) -> Any:
        targets = self._targets(kwargs.get("positions"))
        if not targets:
            return forward(*args, **kwargs)
        self._rows = torch.tensor([t.row for t in targets], device=self.head_weight.device)
        self._states = []
        try:
            output = forward(*args, **kwargs)
            final = output[0] if isinstance(output, tuple) else output
            try:
                self._keep(targets, self._states, final[self._rows])
            except Exception:
                # The engine step itself succeeded; only these requests go without layers
                # (each then fails alone, "no per-layer logits").
                logger.exception("per-layer capture failed for %d requests", len(targets))
        finally:
            self._rows, self._states = None, []
        return output

    @torch.inference_mode()
    def _keep(self, targets: list[_Target], states: list[torch.Tensor], final: torch.Tensor) -> None:
        if len(states) != self.num_layers:
            raise RuntimeError(f"captured {len(states)} layer states for {self.num_layers} layers")
        inner = torch.stack(states)  # [L, R, H]: embeddings, then layers 1..L-1
        normed = torch.stack([self.norm(layer.contiguous()) for layer in inner])
        dtype = torch.float64 if self.head_weight.device.type == "cpu" else torch.float32
        raw_all = torch.cat([inner, final.unsqueeze(0)]).to(dtype)
        normed_all = torch.cat([normed, final.unsqueeze(0)]).to(dtype)
        for column, target in enumerate(targets):
            weight, bias = self._label_rows(target.label_ids, dtype)
            raw = torch.nn.functional.linear(raw_all[:, column], weight, bias)
            lens = torch.nn.functional.linear(normed_all[:, column], weight, bias)
            hidden = {layer: raw_all[layer, column].cpu().tolist() for layer in target.hidden}
            self.results[target.key] = (raw.cpu().tolist(), lens.cpu().tolist(), hidden)
            self.results.move_to_end(target.key)
        while len(self.results) > MAX_KEPT:
            self.results.popitem(last=False)

    def _label_rows(self, label_ids: list[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's LM-head rows for the labels; zero rows for labels another rank holds."""
        hidden = self.head_weight.shape[1]
        weight = torch.zeros((len(label_ids), hidden), dtype=dtype, device=self.head_weight.device)
        bias = None if self.head_bias is None else torch.zeros(len(label_ids), dtype=dtype, device=weight.device)
        for i, token in enumerate(label_ids):
            if self.vocab_start <= token < self.vocab_end:
                weight[i] = self.head_weight[token - self.vocab_start].to(dtype)
                if bias is not None and self.head_bias is not None:
                    bias[i] = self.head_bias[token - self.vocab_start].to(dtype)
        return weight, bias

    def pop(self, keys: list[str]) -> dict[str, LayerLogits]:
        return {key: self.results.pop(key) for key in keys if key in self.results}


class LayerCaptureExtension:
    """Methods vLLM adds to its worker (``worker_extension_cls``)."""

    model_runner: Any

    def judge_install_layer_capture(self) -> int:
        """Hook the model once; returns the number of decoder layers."""
        capture = getattr(self.model_runner, "judge_layer_capture", None)
        if capture is None:
            capture = LayerCapture(self.model_runner)
            self.model_runner.judge_layer_capture = capture
        return capture.num_layers

    def judge_pop_layer_logits(self, keys: list[str]) -> dict[str, LayerLogits]:
        """Take the results for these keys (absent when not captured on this rank)."""
        capture = getattr(self.model_runner, "judge_layer_capture", None)
        return capture.pop(keys) if capture is not None else {}

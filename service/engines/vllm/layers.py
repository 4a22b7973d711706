"""Per-layer label logits inside vLLM's worker, for LAGER.

vLLM loads this class as its ``worker_extension_cls``: its methods join the worker and are
called from the front end with ``collective_rpc``. ``judge_install_layer_capture`` wraps
the model runner's forward call and hooks the decoder layers. On every engine step it
finds the requests that asked for layers (``SamplingParams.extra_args["judge_layers"]``,
a key chosen by the front end) whose scoring position, the last prompt token, is in the
step, and keeps that token's hidden state at every layer. Rows come from the step's own
``query_start_loc`` and ``positions``, so each request gets its own row under continuous
batching and chunked prefill; a chunk that does not end the prompt is ignored. A request
may also name hidden-state entries (``extra_args["judge_hidden"]``, for the probe): their
rows are kept as they are. The front end then fetches and removes the result by key with
``judge_pop_layer_logits``.

What is read is found in the model and proven, not assumed from one family's layout:
- the head: the label rows of the model's own head and logit transform (``vllm_head``);
- the layers: the model's one list of ``num_hidden_layers`` modules;
- each layer's residual stream: its output, or its output plus the residual it returns
  (vLLM layers pass the residual separately), whichever the final norm maps to the
  model's own final hidden state; that norm is the final norm. Every capture re-checks
  this on the last layer, so a wrong reading fails its requests instead of serving them.
Only the label rows of the head are applied (``[layers, hidden] @ [hidden, labels]``), in
float64 on CPU, raw and after the final norm, like the transformers engine.

Hooks do not run inside compiled graphs, so the model stays compiled (and on a GPU, in CUDA
graphs) for every step but those that hold a capture target: such a step asks vLLM's
forward context for the eager forward (``skip_compiled``, the flag vLLM itself sets for
encoder inputs, and no CUDA graph), where the hooks run. Steps without a layered request
pay nothing for the capture. With tensor parallelism each rank holds a slice of the vocabulary: it fills
the labels it owns and leaves zeros elsewhere, and the front end sums the ranks' answers.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from service.engines.heads import architecture, head_tolerance
from service.engines.vllm.head import LabelRows, LayerCaptureUnavailable, model_device

logger = logging.getLogger(__name__)

EXTRA_ARGS_KEY = "judge_layers"
# The hidden-state entries (0 = embeddings, the last = the final normed output) to keep.
HIDDEN_ARGS_KEY = "judge_hidden"
# Results not fetched (their request was aborted at the wrong moment; the front end also
# drops what a request it gives up left) go, oldest first, beyond this many bytes.
MAX_KEPT_BYTES = 64 << 20
# A kept float, in a Python list: the float object and the list's pointer to it.
FLOAT_BYTES = 32

# Per request: raw and final-normed label logits per layer, and the asked-for hidden rows.
LayerLogits = tuple[list[list[float]], list[list[float]], dict[int, list[float]]]
Norm = Callable[[torch.Tensor], torch.Tensor]


class _Target:
    __slots__ = ("hidden", "key", "label_ids", "row")

    def __init__(self, key: str, row: int, label_ids: list[int], hidden: list[int]) -> None:
        self.key, self.row, self.label_ids, self.hidden = key, row, label_ids, hidden


def _layer_list(model: Any, count: int) -> tuple[Any, torch.nn.ModuleList]:
    """The module holding the model's list of ``count`` decoder layers, and that list."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == count
    ]
    if not found:
        raise LayerCaptureUnavailable(f"no list of {count} decoder layers")
    name, layers = min(found, key=lambda item: item[0].count("."))
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return parent, layers


def _normed(norm: Norm, hidden: torch.Tensor) -> torch.Tensor:
    """A norm applied alone (some vLLM norms return ``(hidden, residual)`` even then)."""
    out: Any = norm(hidden.contiguous())
    return out[0] if isinstance(out, tuple) else out


def _hidden_arg(layer: torch.nn.Module) -> int:
    """Position of ``hidden_states`` among a layer's forward arguments."""
    names = list(inspect.signature(layer.forward).parameters)
    return names.index("hidden_states") if "hidden_states" in names else 0


@contextlib.contextmanager
def _eager_step() -> Iterator[None]:
    """Run this engine step's forward pass eagerly, so the layer hooks see it: bypass the
    compiled model (``skip_compiled``) and any CUDA graph (``cudagraph_runtime_mode``)."""
    from vllm.config import CUDAGraphMode
    from vllm.forward_context import get_forward_context

    context = get_forward_context()
    saved = context.skip_compiled, context.cudagraph_runtime_mode
    context.skip_compiled, context.cudagraph_runtime_mode = True, CUDAGraphMode.NONE
    try:
        yield
    finally:
        context.skip_compiled, context.cudagraph_runtime_mode = saved


class LayerCapture:
    """Installs the hooks on one worker's model and keeps results by key."""

    def __init__(self, runner: Any) -> None:
        model = runner.get_model()
        config = runner.model_config.hf_text_config
        self.name = architecture(config)
        self.num_layers = int(config.num_hidden_layers)
        dtype = runner.model_config.dtype
        self.decoder, layers = _layer_list(model, self.num_layers)
        # The head is proven by judge_check_head before the capture is installed.
        self.head = LabelRows(model, config, int(config.hidden_size), dtype, model_device(model))
        self.norms: list[Norm] = [
            module for module in self.decoder.children() if "norm" in type(module).__name__.lower()
        ]
        # (final norm, whether a layer's stream adds the residual it returns), once proven.
        self.stream: tuple[Norm, bool] | None = None
        # Why the last capture could not be proven (None after a proven one).
        self.problem: str | None = None
        self.runner = runner
        self.results: OrderedDict[str, LayerLogits] = OrderedDict()
        self.kept_bytes = 0
        self._rows: torch.Tensor | None = None
        self._states: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        # Tokens per request id of the engine step being run; None outside execute_model,
        # so warm-up and dummy forward passes are never read.
        self._scheduled: dict[str, int] | None = None
        self._hidden_arg = _hidden_arg(layers[0])
        layers[0].register_forward_pre_hook(self._embeddings_hook, with_kwargs=True)
        for layer in layers:
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
            self._record(lambda: kwargs["hidden_states"] if "hidden_states" in kwargs else args[self._hidden_arg])

    def _layer_hook(self, module: Any, args: tuple, output: Any) -> None:
        if self._rows is not None:
            self._record(lambda: output)

    def _record(self, read: Callable[[], Any]) -> None:
        """Keep this step's rows of a layer's output: hidden states, or (hidden, residual).
        Copied at once: vLLM's fused norms update their inputs in place. Never raises into
        the engine step: a failure leaves this step's capture incomplete, and its requests
        then fail alone."""
        try:
            value = read()
            hidden, residual = (
                (value[0], value[1] if len(value) > 1 else None) if isinstance(value, tuple) else (value, None)
            )
            rows = self._select(hidden)
            self._states.append((rows, self._select(residual) if isinstance(residual, torch.Tensor) else None))
        except Exception:
            logger.exception("reading a layer's hidden state failed")
            self._states.append((torch.empty(0), None))

    def _select(self, tensor: torch.Tensor) -> torch.Tensor:
        """This step's target rows of [tokens, H] (or [1, tokens, H]) hidden states."""
        assert self._rows is not None
        return tensor.reshape(-1, tensor.shape[-1])[self._rows]

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
        self._rows = torch.tensor([t.row for t in targets], device=self.head.weight.device)
        self._states = []
        try:
            with _eager_step():
                output = forward(*args, **kwargs)
            final = output[0] if isinstance(output, tuple) else output
            try:
                self._keep(targets, self._states, self._select(final))
            except Exception:
                # The engine step itself succeeded; only these requests go without layers
                # (each then fails alone, "no per-layer logits").
                logger.exception("per-layer capture failed for %d requests", len(targets))
        finally:
            self._rows, self._states = None, []
        return output

    def _find_stream(self, last: tuple[torch.Tensor, torch.Tensor | None], final: torch.Tensor) -> tuple[Norm, bool]:
        """The final norm and stream convention that turn the last layer's output into the
        model's final hidden state; the proven one first."""
        hidden, residual = last
        options = [self.stream] if self.stream is not None else []
        options += [
            (norm, adds) for norm in self.norms for adds in ((True, False) if residual is not None else (False,))
        ]
        tol = head_tolerance(final.dtype)
        for norm, adds in options:
            stream = hidden + residual if adds and residual is not None else hidden
            normed = _normed(norm, stream)
            if normed.shape == final.shape and torch.allclose(normed.double(), final.double(), rtol=tol, atol=tol):
                return norm, adds
        raise LayerCaptureUnavailable("no final norm maps the last layer's output to the model's final hidden state")

    @torch.inference_mode()
    def _keep(
        self, targets: list[_Target], states: list[tuple[torch.Tensor, torch.Tensor | None]], final: torch.Tensor
    ) -> None:
        if len(states) != self.num_layers + 1:
            raise RuntimeError(f"captured {len(states)} layer states for {self.num_layers} layers")
        try:
            self.stream = norm, adds = self._find_stream(states[-1], final)
        except LayerCaptureUnavailable as exc:
            self.problem = f"{self.name}: {exc}"
            raise
        self.problem = None
        # Rows: the first layer's input (the embeddings), each later layer's input, the final output.
        inner = torch.stack([h + r if adds and r is not None else h for h, r in states[:-1]])  # [L, R, H]
        normed = torch.stack([_normed(norm, layer) for layer in inner])
        dtype = torch.float64 if self.head.weight.device.type == "cpu" else torch.float32
        raw_all = torch.cat([inner, final.unsqueeze(0)])
        normed_all = torch.cat([normed, final.unsqueeze(0)])
        for column, target in enumerate(targets):
            raw = self.head.label_logits(raw_all[:, column], target.label_ids, dtype)
            lens = self.head.label_logits(normed_all[:, column], target.label_ids, dtype)
            hidden = {layer: raw_all[layer, column].to(dtype).cpu().tolist() for layer in target.hidden}
            self._drop(target.key)
            self.results[target.key] = (raw.cpu().tolist(), lens.cpu().tolist(), hidden)
            self.kept_bytes += _result_bytes(self.results[target.key])
        while self.kept_bytes > MAX_KEPT_BYTES and self.results:
            self._drop(next(iter(self.results)))

    def _drop(self, key: str) -> LayerLogits | None:
        result = self.results.pop(key, None)
        if result is not None:
            self.kept_bytes -= _result_bytes(result)
        return result

    def pop(self, keys: list[str]) -> dict[str, LayerLogits]:
        taken = {key: self._drop(key) for key in keys}
        return {key: result for key, result in taken.items() if result is not None}


def _result_bytes(result: LayerLogits) -> int:
    raw, lens, hidden = result
    floats = sum(map(len, raw)) + sum(map(len, lens)) + sum(map(len, hidden.values()))
    return floats * FLOAT_BYTES


class LayerCaptureExtension:
    """Methods vLLM adds to its worker (``worker_extension_cls``)."""

    model_runner: Any

    def judge_check_head(self) -> str | None:
        """Why vLLM's head for this model differs from the family's own (None when it
        does not): the front end then refuses the model."""
        runner = self.model_runner
        config = runner.model_config.hf_text_config
        model = runner.get_model()
        try:
            head = LabelRows(model, config, int(config.hidden_size), runner.model_config.dtype, model_device(model))
            problem = head.prove(model, runner.model_config.dtype)
        except LayerCaptureUnavailable as exc:
            problem = str(exc)
        return None if problem is None else f"{architecture(config)}: {problem}"

    def judge_install_layer_capture(self) -> tuple[int, str | None]:
        """Hook the model once; returns the number of decoder layers, and why per-layer
        capture is unavailable (None when it is installed)."""
        capture = getattr(self.model_runner, "judge_layer_capture", None)
        if capture is None:
            try:
                capture = LayerCapture(self.model_runner)
            except LayerCaptureUnavailable as exc:
                config = self.model_runner.model_config.hf_text_config
                return int(config.num_hidden_layers), f"{architecture(config)}: {exc}"
            self.model_runner.judge_layer_capture = capture
        return capture.num_layers, capture.problem

    def judge_pop_layer_logits(self, keys: list[str]) -> dict[str, LayerLogits]:
        """Take the results for these keys (absent when not captured on this rank)."""
        capture = getattr(self.model_runner, "judge_layer_capture", None)
        return capture.pop(keys) if capture is not None else {}

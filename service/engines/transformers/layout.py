"""Where a Hugging Face causal LM keeps what the transformers engine reads: its decoder,
its decoder layers and its final norm.

Families name these differently (``model.layers`` and ``norm`` in Llama, ``h`` and
``ln_f`` in GPT-2, ``blocks`` and ``norm_f`` in MPT, ``final_layernorm`` in Phi...), so
they are found from the model itself and then proven on one forward pass of the model:
the decoder's ``hidden_states`` must be the input of the first layer, the output of each
layer after it, and the final output; the final norm must turn the last layer's output
into the decoder's final output. A model that fails any of this still serves ``final``
scores; only per-layer scores (LAGER) are refused, with the reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.core.tasks import ScoringTask
from service.engines.heads import LabelHead, architecture, head_tolerance


@dataclass(frozen=True)
class DecoderLayout:
    """The decoder of a causal LM and what its per-layer rows need."""

    decoder: Any
    # Whether the decoder's forward takes explicit positions (left padding needs them;
    # families without the argument derive positions from the attention mask or use none).
    accepts_position_ids: bool
    num_layers: int
    # Applied to an intermediate layer's output, as the model applies it to the last one.
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None
    # Why per-layer scores cannot be served exactly; None when they can.
    layers_unavailable: str | None


def _tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    tol = head_tolerance(b.dtype)
    return bool(torch.allclose(a.double(), b.double(), rtol=tol, atol=tol))


def _layer_list(decoder: Any, config: Any) -> torch.nn.ModuleList | None:
    """The decoder's list of layers: its one ModuleList child, or the one as long as the
    config's layer count."""
    lists = [m for m in decoder.children() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if len(lists) == 1:
        return lists[0]
    count = getattr(config, "num_hidden_layers", None)
    matching = [m for m in lists if len(m) == count]
    return matching[0] if len(matching) == 1 else None


def _norm_candidates(decoder: Any, layers: torch.nn.Module) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Norm modules directly under the decoder, then no norm at all (post-norm families
    such as GPT-1 end each layer with their norm)."""
    found: list[Callable[[torch.Tensor], torch.Tensor]] = [
        module for module in decoder.children() if module is not layers and "norm" in type(module).__name__.lower()
    ]
    found.append(lambda hidden: hidden)
    return found


@torch.inference_mode()
def find_layout(model: Any, device: torch.device) -> DecoderLayout:
    """Find and prove the decoder layout of ``model`` on a short probe."""
    decoder = model.get_decoder()
    accepts_position_ids = "position_ids" in inspect.signature(decoder.forward).parameters
    num_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    layers = _layer_list(decoder, model.config)
    if layers is None:
        reason = f"{architecture(model)}: no single list of decoder layers was found"
        return DecoderLayout(decoder, accepts_position_ids, num_layers, None, reason)
    seen: list[torch.Tensor] = []
    hooks = [
        layers[0].register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(_tensor(kwargs.get("hidden_states", args[0] if args else None))),
            with_kwargs=True,
        )
    ]
    hooks += [layer.register_forward_hook(lambda module, args, out: seen.append(_tensor(out))) for layer in layers]
    try:
        probe = torch.arange(3, 19, device=device).unsqueeze(0)
        out = decoder(input_ids=probe, output_hidden_states=True, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    final, states = out.last_hidden_state, out.hidden_states
    if states is None or len(states) != len(layers) + 1 or len(seen) != len(layers) + 1:
        reason = f"{architecture(model)}: its hidden states do not hold one entry per decoder layer"
        return DecoderLayout(decoder, accepts_position_ids, len(layers), None, reason)
    # Entry i (< L) is what layer i reads: the embeddings, then each layer's output.
    if not all(_close(states[i], seen[i]) for i in range(len(layers))) or not _close(states[-1], final):
        reason = f"{architecture(model)}: its hidden states are not the decoder layers' inputs and final output"
        return DecoderLayout(decoder, accepts_position_ids, len(layers), None, reason)
    for norm in _norm_candidates(decoder, layers):
        try:
            normed = norm(seen[-1])
        except Exception:  # a module that does not take a hidden state is not the final norm
            continue
        if _close(normed, final):
            return DecoderLayout(decoder, accepts_position_ids, len(layers), norm, None)
    reason = f"{architecture(model)}: no final norm maps its last layer's output to its final hidden state"
    return DecoderLayout(decoder, accepts_position_ids, len(layers), None, reason)


def layer_logits(
    head: LabelHead | None, layout: DecoderLayout | None, states: list[torch.Tensor], batch: Sequence[ScoringTask]
) -> tuple[list[tuple[tuple[float, ...], ...]], list[tuple[tuple[float, ...], ...]]]:
    """Label logits of every layer at the scoring position, raw and final-normed.

    ``states``: one [B, H] tensor per hidden-states entry (proven at load to be the first
    layer's input, each later layer's input, and the final output). Every row goes
    through the same head and logit transform as the final scores, using only the label
    rows of the head: [layers, hidden] @ [hidden, labels].
    """
    assert head is not None and layout is not None and layout.final_norm is not None
    # The last entry already carries the final norm; keep it as the model emits it.
    stacked = torch.stack(states, dim=1)  # [B, L+1, H]
    normed = torch.cat([layout.final_norm(stacked[:, :-1, :]), stacked[:, -1:, :]], dim=1)
    raw_out, normed_out = [], []
    for row, task in enumerate(batch):
        raw = head.label_logits(stacked[row], task.label_ids)
        lens = head.label_logits(normed[row], task.label_ids)
        raw_out.append(tuple(map(tuple, raw.tolist())))
        normed_out.append(tuple(map(tuple, lens.tolist())))
    return raw_out, normed_out

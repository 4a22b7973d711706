"""The LM head as each model family applies it, in one place.

A causal LM's next-token logits are its output embeddings (weight, and a bias where the
family has one) applied to the final hidden state, followed, in some families, by a fixed
transform written into their ``ForCausalLM.forward``: final logit softcapping (Gemma 2 and
3, VaultGemma, nanochat, RecurrentGemma, xLSTM), a logit scale (Cohere), a divisor (Granite)
or a multiplier (HyperCLOVA X, Falcon-H1). ``FAMILY_TRANSFORMS`` lists those transforms by
``model_type``; every other family applies its head as is.

The serving engines apply the head in float64 (on CPU) to the scoring position only.
``check_head`` proves, when a model loads, that this reproduces the model's own forward
pass: it feeds chosen final hidden states through the model's own head path and compares.
A family whose head does something not listed here is refused instead of served wrong
numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.core.errors import UnsupportedModel


@dataclass(frozen=True, slots=True)
class LogitTransform:
    """What a family applies to its head's output: softcap first, then scale (vLLM's
    ``LogitsProcessor`` order; no family applies both)."""

    softcap: float | None = None
    scale: float = 1.0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        if self.scale != 1.0:
            logits = logits * self.scale
        return logits


def _softcap(field: str) -> Callable[[Any], LogitTransform]:
    return lambda config: LogitTransform(softcap=getattr(config, field, None))


def _scale(field: str, invert: bool = False) -> Callable[[Any], LogitTransform]:
    def transform(config: Any) -> LogitTransform:
        value = float(getattr(config, field))
        return LogitTransform(scale=1.0 / value if invert else value)

    return transform


_GEMMA_SOFTCAP = _softcap("final_logit_softcapping")
_GRANITE_DIVISOR = _scale("logits_scaling", invert=True)
_COHERE_SCALE = _scale("logit_scale")

# Read from each family's ForCausalLM.forward in transformers; keyed by config.model_type.
FAMILY_TRANSFORMS: dict[str, Callable[[Any], LogitTransform]] = {
    "gemma2": _GEMMA_SOFTCAP,
    "gemma3_text": _GEMMA_SOFTCAP,
    "gemma3n_text": _GEMMA_SOFTCAP,
    "gemma4_text": _GEMMA_SOFTCAP,
    "gemma4_unified_text": _GEMMA_SOFTCAP,
    "vaultgemma": _GEMMA_SOFTCAP,
    "nanochat": _GEMMA_SOFTCAP,
    "recurrent_gemma": _softcap("logits_soft_cap"),
    "xlstm": _softcap("output_logit_soft_cap"),
    "cohere": _COHERE_SCALE,
    "cohere2": _COHERE_SCALE,
    "cohere2_moe": _COHERE_SCALE,
    "cohere_compass_text": _COHERE_SCALE,
    "granite": _GRANITE_DIVISOR,
    "granite_swa": _GRANITE_DIVISOR,
    "granitemoe": _GRANITE_DIVISOR,
    "granitemoe_swa": _GRANITE_DIVISOR,
    "granitemoehybrid": _GRANITE_DIVISOR,
    "granitemoeshared": _GRANITE_DIVISOR,
    # HyperCLOVA X multiplies by the same field Granite divides by.
    "hyperclovax": _scale("logits_scaling"),
    "falcon_h1": _scale("lm_head_multiplier"),
}


def transform_for(config: Any) -> LogitTransform:
    """The logit transform of ``config``'s family (identity for families without one)."""
    family = FAMILY_TRANSFORMS.get(getattr(config, "model_type", ""))
    return family(config) if family is not None else LogitTransform()


def architecture(model_or_config: Any) -> str:
    """The name users know a model by: its architecture class and model type."""
    config = getattr(model_or_config, "config", model_or_config)
    names = getattr(config, "architectures", None) or [type(model_or_config).__name__]
    return f"{names[0]} (model_type {getattr(config, 'model_type', '?')!r})"


class LabelHead:
    """A model's LM head and logit transform, applied in ``dtype`` (float64 on CPU)."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        head = model.get_output_embeddings()
        weight = getattr(head, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise UnsupportedModel(f"{architecture(model)} has no linear output embeddings to score with")
        self.weight = weight.detach().to(dtype)
        bias = getattr(head, "bias", None)
        self.bias = bias.detach().to(dtype) if isinstance(bias, torch.Tensor) else None
        self.transform = transform_for(model.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of [..., H] hidden states."""
        out = torch.nn.functional.linear(hidden.to(self.weight.device, self.dtype), self.weight, self.bias)
        return self.transform(out)

    def label_logits(self, hidden: torch.Tensor, label_ids: Sequence[int]) -> torch.Tensor:
        """Logits of the label tokens only, [..., K]: the transform acts on each logit alone,
        so the label rows of the head give exactly the label entries of ``logits``."""
        ids = list(label_ids)
        bias = self.bias[ids] if self.bias is not None else None
        out = torch.nn.functional.linear(hidden.to(self.weight.device, self.dtype), self.weight[ids], bias)
        return self.transform(out)


def head_tolerance(dtype: torch.dtype) -> float:
    """Relative agreement expected between the model's own logits in ``dtype`` and ours."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


@torch.inference_mode()
def check_head(model: Any, head: LabelHead, device: torch.device) -> None:
    """Prove ``head`` equals the model's own head path, or raise ``UnsupportedModel``.

    The decoder's output is replaced, through a forward hook, by chosen hidden states whose
    raw logits reach magnitudes from 0.5 to 2000, and the model's own forward turns them
    into logits. Softcapping shows at large magnitudes, a scale at every magnitude.
    """
    decoder = model.get_decoder()
    size = head.weight.shape[1]
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn((8, size), generator=generator, dtype=torch.float64)
    raw = torch.nn.functional.linear(directions.to(head.weight.device), head.weight)
    targets = torch.logspace(math.log10(0.5), math.log10(2000.0), 8, dtype=torch.float64)
    states = directions * (targets / raw.abs().amax(dim=-1).cpu()).unsqueeze(-1)
    states = states.to(device, next(model.parameters()).dtype)

    def replace_output(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (states.unsqueeze(0), *output[1:])
        output["last_hidden_state"] = states.unsqueeze(0)
        return output

    handle = decoder.register_forward_hook(replace_output)
    try:
        ids = torch.ones((1, states.shape[0]), dtype=torch.long, device=device)
        theirs = model(input_ids=ids, use_cache=False).logits[0].to(torch.float64).cpu()
    finally:
        handle.remove()
    ours = head.logits(states).to(torch.float64).cpu()
    if theirs.shape != ours.shape:
        raise UnsupportedModel(
            f"{architecture(model)}: its logits have shape {tuple(theirs.shape)}, its output embeddings give "
            f"{tuple(ours.shape)}; the judge cannot reproduce this head"
        )
    scale = ours.abs().amax(dim=-1, keepdim=True).clamp(min=1.0)
    error = float(((theirs - ours).abs() / scale).max())
    if error > head_tolerance(states.dtype):
        raise UnsupportedModel(
            f"{architecture(model)}: the model's own logits differ from its output embeddings"
            f"{' with ' + str(head.transform) if head.transform != LogitTransform() else ''} by up to "
            f"{error:.3g} (relative); its head post-processing is unknown to the judge, which refuses "
            "to serve inexact scores"
        )


def load_causal_lm(model_dir: Path, dtype: torch.dtype) -> Any:
    """Load the model as a decoder-only causal LM, or refuse it by name."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel(
            f"{architecture(config)} is an encoder-decoder model; the judge serves decoder-only causal LMs"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
    except ValueError as exc:
        # transformers raises ValueError for a config with no causal-LM class.
        raise UnsupportedModel(f"{architecture(config)} is not a causal LM transformers can load: {exc}") from exc

"""Random-weight judges at real shapes for bench/gpu.py: built from a config, saved as a
model directory the service loads through ``JUDGE_MODEL``, with the default judge's
tokenizer, and the reference the served figures are checked against: the model's own
forward pass, one prompt at a time.

Speed does not depend on the weights, so random weights at a real shape time what the
real model would. The weights are rounded to bf16 before anything else, so the bf16
directory holds exactly the model the float32 reference ran (a float32 load of it
widens every weight back without loss).
"""

from __future__ import annotations

import gc
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The real judges' shapes. The vocabulary stays each model's own where the default
# tokenizer's 49,152 ids fit in it (they do in all three), so the embedding and LM head
# cost what they cost on the real model.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    },
    "llama3-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    },
    "qwen2.5-7b": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    },
}

# The same three families in miniature for the CPU dry run (--tiny): same code paths,
# seconds instead of minutes. The vocabulary is the tokenizer's, so every prompt encodes.
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
TINY_HEADS = {"smollm2-135m": (4, 2), "llama3-8b": (4, 2), "qwen2.5-7b": (4, 1)}

# Logits of this spread (std) at the scoring position: label distributions far from
# uniform (the tiny models' default init would give near-uniform ones), so that an error
# in any of them shows; about the 8B shape's own default init (0.02 x sqrt(4096)). Not
# wider: the engine proves its batched paths at load within 0.1 nats in bf16, and bf16
# rounding grows with the logits' spread; at 2.0 the SmolLM2 shape's random weights already
# failed that proof (0.105 nats), and the speed stages would then time the engine's
# one-prompt-at-a-time fallback rather than the batches a trained judge gets.
LOGIT_STD = 1.0


def shape_config(name: str, tiny: bool, vocab: int) -> Any:
    """The transformers config of shape ``name`` (its miniature with ``tiny``)."""
    from transformers import AutoConfig

    fields = dict(SHAPES[name])
    if tiny:
        heads, kv_heads = TINY_HEADS[name]
        fields |= TINY | {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab}
        fields["max_position_embeddings"] = 4096
    if fields["vocab_size"] < vocab:
        raise ValueError(f"{name}: the tokenizer's {vocab} ids do not fit in a vocabulary of {fields['vocab_size']}")
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, bos_token_id=1, eos_token_id=2, pad_token_id=2, **fields)


def load_tokenizer(path: Path | None) -> Any:
    """The default judge's tokenizer: from ``path`` (a saved copy, as bench/gpu_run.sh
    carries to a host without the default model's package), else from the default model."""
    from transformers import AutoTokenizer

    if path is None:
        from service.config import DEFAULT_MODEL, Settings
        from service.engines.model_store import resolve_model

        path = resolve_model(DEFAULT_MODEL, Settings().cache_dir)
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def save_tokenizer(path: Path) -> None:
    """Save the default judge's tokenizer alone (a few MB) at ``path``."""
    load_tokenizer(None).save_pretrained(str(path))


@dataclass
class Built:
    """A saved random-weight model and its own forward pass's label log-probabilities."""

    name: str
    directory: Path
    config: Any
    parameters: int
    embedding_parameters: int
    # Per prompt, per label: float32 and bf16 forward passes, the head in float64.
    reference_fp32: list[list[float]]
    reference_bf16: list[list[float]]


def build(
    name: str,
    directory: Path,
    tokenizer: Any,
    device: torch.device,
    tiny: bool,
    prompts: list[list[int]],
    labels: list[int],
) -> Built:
    """Build shape ``name`` with seeded random weights on ``device``, compute its own
    forward pass over ``prompts`` in float32 and in bf16, and save it (bf16) with the
    tokenizer at ``directory``."""
    from transformers import AutoModelForCausalLM

    config = shape_config(name, tiny, len(tokenizer))
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        # The final norm gives unit-RMS hidden states: this std sets the logits' spread.
        head.normal_(0.0, LOGIT_STD / math.sqrt(config.hidden_size))
        for parameter in model.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).to(torch.float32))
    parameters = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    fp32 = reference(model, prompts, labels)
    model = model.to(torch.bfloat16)
    bf16 = reference(model, prompts, labels)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    del model, head
    release()
    return Built(name, directory, config, parameters, embedding, fp32, bf16)


@torch.inference_mode()
def reference(model: Any, prompts: list[list[int]], labels: list[int]) -> list[list[float]]:
    """log P(label) after each prompt by the model's own forward pass, one prompt at a time:
    the final-normed hidden state at the last position through the LM head in float64."""
    device = next(model.parameters()).device
    head = model.get_output_embeddings().weight.double()
    out = []
    for ids in prompts:
        states = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True).hidden_states
        logprobs = torch.log_softmax(states[-1][0, -1].double() @ head.T, dim=-1)
        out.append(logprobs[labels].tolist())
    return out


def release() -> None:
    """Give freed GPU memory back, so the next model or server finds it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def remove(directory: Path) -> None:
    """Delete a saved model (the largest are ~16 GB)."""
    shutil.rmtree(directory, ignore_errors=True)

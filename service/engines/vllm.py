"""vLLM engine: ``vllm.v1`` ``AsyncLLM`` in-process, one engine request per item.

Each item asks for exactly the label tokens' log-probabilities
(``SamplingParams(logprob_token_ids=...)``): raw log-softmax over the full vocabulary,
never a top-k that may miss a label. vLLM batches continuously, so the queue sends every
item as its own concurrent request; cancelling an item's task aborts its engine request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.config import Settings
from service.engines import gpu_present
from service.engines.base import EngineDead, EngineError, LabelScores, ScoringTask

logger = logging.getLogger(__name__)


class VllmEngine:
    """Scores label tokens with vLLM's asynchronous engine."""

    supports_layers = False
    concurrent_batches = True

    def __init__(self, model_dir: Path, name: str, settings: Settings) -> None:
        self.name = name
        self.model_dir = model_dir
        self.settings = settings
        self.max_model_len = 0
        self.num_layers = 0
        self._engine: Any = None
        self._dead = False
        self._ids = itertools.count()

    @property
    def healthy(self) -> bool:
        if self._dead:
            return False
        return self._engine is None or not getattr(self._engine, "errored", False)

    def engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        s = self.settings
        on_gpu = gpu_present()
        if not on_gpu:
            # vLLM's CPU backend sizes its KV cache from this variable, not from memory utilisation.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{s.cpu_kvcache_space_gb:g}")
        dtype = s.dtype if s.dtype != "auto" else ("auto" if on_gpu else "float32")
        options: dict[str, Any] = dict(
            model=str(self.model_dir),
            tokenizer=str(self.model_dir),
            dtype=dtype,
            max_model_len=s.max_model_len,
            gpu_memory_utilization=s.gpu_memory_utilization,
            tensor_parallel_size=s.tensor_parallel_size,
            max_num_seqs=s.max_num_seqs,
            max_num_batched_tokens=s.max_num_batched_tokens,
            enable_prefix_caching=True,
            # Label sets are up to 32 tokens; allow that many requested log-probabilities.
            max_logprobs=64,
            disable_log_stats=False,
        )
        return AsyncEngineArgs(**options)

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        self._engine = AsyncLLM.from_engine_args(self.engine_args())
        config = self._engine.model_config
        self.max_model_len = int(config.max_model_len)
        self.num_layers = int(config.hf_config.num_hidden_layers)
        await self._score_one(ScoringTask(token_ids=(0,) * 8, label_ids=(0,)))

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    async def score(self, batch: Sequence[ScoringTask]) -> list[LabelScores]:
        return list(await asyncio.gather(*(self._score_one(task) for task in batch)))

    async def _score_one(self, task: ScoringTask) -> LabelScores:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        if task.want_layers:
            raise EngineError("per-layer scores are not available on the vLLM engine")
        if self._engine is None:
            raise EngineDead("the vLLM engine is not running")
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(task.label_ids))
        prompt = TokensPrompt(prompt_token_ids=list(task.token_ids))
        final = None
        try:
            async for output in self._engine.generate(prompt, params, request_id=f"judge-{next(self._ids)}"):
                final = output
        except EngineDeadError as exc:
            self._dead = True
            raise EngineDead("the vLLM engine died") from exc
        if final is None or not final.outputs or not final.outputs[0].logprobs:
            raise EngineError("vLLM returned no log-probabilities")
        position = final.outputs[0].logprobs[0]
        return LabelScores(logprobs=tuple(float(position[token].logprob) for token in task.label_ids))

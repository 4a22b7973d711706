"""vLLM engine: ``vllm.v1`` ``AsyncLLM`` in-process, one engine request per item.

Each item asks for exactly the label tokens' log-probabilities
(``SamplingParams(logprob_token_ids=...)``): raw log-softmax over the full vocabulary,
never a top-k that may miss a label. vLLM batches continuously, so the queue sends every
item as its own concurrent request; cancelling an item's task aborts its engine request.

With ``JUDGE_VLLM_LAYERS`` on (the default), the worker extension in
``service.engines.vllm.layers`` captures every layer's label logits at the scoring
position of the requests that ask (LAGER, ``return_layers``), in the same forward pass.
The model stays compiled; only the engine steps that hold such a request run eagerly,
since hooks do not run inside compiled graphs.

The engine schedules by priority: online requests at ``ONLINE_PRIORITY``, batch work's
at ``BACKGROUND_PRIORITY``. vLLM takes waiting requests in priority order and, short of KV
cache, preempts the lowest first; it never preempts for a sequence slot, so background
work holds at most half of them (the scheduler's policy, ``service.scheduling.passes``) and
online requests always find one.

Only architectures whose vLLM scores are verified against transformers are served
(``vllm_families``); at start the worker also proves that vLLM's head equals the
family's own (``vllm_head``), or the model is refused.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.core.errors import EngineDead, EngineError, UnsupportedModel
from service.core.tasks import CritiqueRow, LabelScores, ScoringTask, common_prefix
from service.engines import critique
from service.engines.base import EngineCapabilities
from service.engines.device import gpu_present
from service.engines.vllm.families import check_architecture
from service.engines.vllm.layers import EXTRA_ARGS_KEY, HIDDEN_ARGS_KEY

logger = logging.getLogger(__name__)


# A prefix shared by tasks of one batch, at least this long, is computed once (see ``score``).
PREFIX_FIRST_TOKENS = 64
# KV-cache block size on CPU: the smallest the CPU attention kernel takes (multiples of 32).
# vLLM's CPU default, 128, leaves up to 127 tokens of a shared prefix to every request.
CPU_BLOCK_SIZE = 32
# vLLM serves lower values first.
ONLINE_PRIORITY = 0
BACKGROUND_PRIORITY = 1


def prefix_leaders(batch: Sequence[ScoringTask]) -> list[int | None]:
    """For each task, the task of the batch whose request it waits for (one sharing a
    prefix of ``PREFIX_FIRST_TOKENS`` or more with it), or None to go at once."""
    order = sorted(range(len(batch)), key=lambda i: batch[i].token_ids)
    leaders: list[int | None] = [None] * len(batch)
    lead = None
    for i in order:
        if lead is not None and common_prefix(batch[lead].token_ids, batch[i].token_ids) >= PREFIX_FIRST_TOKENS:
            leaders[i] = lead
        else:
            lead = i
    return leaders


class VllmEngine:
    """Scores label tokens with vLLM's asynchronous engine."""

    def __init__(
        self,
        model_dir: Path,
        name: str,
        *,
        tokenizer: Any = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        prefix_reuse: bool = True,
        block_size: int | None = None,
        capture_layers: bool = True,
        cpu_kvcache_space_gb: float = 4.0,
        cpu_reserved_cores: int = 0,
    ) -> None:
        self.name = name
        self.model_dir = model_dir
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tensor_parallel_size = tensor_parallel_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefix_reuse = prefix_reuse
        self.block_size = block_size
        self.capture_layers = capture_layers
        self.cpu_kvcache_space_gb = cpu_kvcache_space_gb
        self.cpu_reserved_cores = cpu_reserved_cores
        self.num_layers = 0
        self._engine: Any = None
        self._dead = False
        self._ids = itertools.count()
        self.supports_layers = False
        self.tokenizer = tokenizer
        self._stop_ids: frozenset[int] = frozenset()
        self.layers_unavailable: str | None = "JUDGE_VLLM_LAYERS=false"
        self._forgetting: set[asyncio.Future[Any]] = set()

    @property
    def healthy(self) -> bool:
        if self._dead:
            return False
        return self._engine is None or not getattr(self._engine, "errored", False)

    def engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        on_gpu = gpu_present()
        if not on_gpu:
            # vLLM's CPU backend sizes its KV cache from this variable, not from memory utilisation.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.cpu_kvcache_space_gb:g}")
            # vLLM keeps a core per worker out of the model's threads by default: half of a 2-core host.
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(self.cpu_reserved_cores))
        dtype = self.dtype if self.dtype != "auto" else ("auto" if on_gpu else "float32")
        options: dict[str, Any] = dict(
            model=str(self.model_dir),
            tokenizer=str(self.model_dir),
            dtype=dtype,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            enable_prefix_caching=self.prefix_reuse,
            # Label sets are up to 32 tokens; allow that many requested log-probabilities.
            max_logprobs=64,
            disable_log_stats=False,
            # Batch work's requests go behind online ones (see the module's docstring).
            scheduling_policy="priority",
        )
        block_size = self.block_size or (None if on_gpu else CPU_BLOCK_SIZE)
        if block_size is not None:
            options["block_size"] = block_size
        # The worker extension proves the head at start; with layers on, it also captures them.
        options["worker_extension_cls"] = "service.engines.vllm.layers.LayerCaptureExtension"
        return AsyncEngineArgs(**options)

    def _launch(self) -> Any:
        check_architecture(self.model_dir)
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(self.engine_args())

    async def start(self) -> EngineCapabilities:
        # Importing vLLM and starting its engine core (processes, model load, compilation)
        # take minutes and block: off the event loop, so /health and /metrics answer meanwhile.
        self._engine = await asyncio.to_thread(self._launch)
        config = self._engine.model_config
        self.num_layers = int(config.hf_text_config.num_hidden_layers)
        try:
            problems = [p for p in await self._engine.collective_rpc("judge_check_head") if p]
            if problems:
                raise UnsupportedModel(
                    f"{problems[0]}: vLLM would serve scores that differ from the model's own forward pass"
                )
            if self.capture_layers:
                await self._install_layer_capture()
        except UnsupportedModel:
            await self.close()
            raise
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self._stop_ids = critique.stop_token_ids(self.tokenizer, self.model_dir)
        await self.probe()
        return EngineCapabilities(
            max_model_len=int(config.max_model_len),
            num_layers=self.num_layers,
            layers_unavailable=self.layers_unavailable,
            # vLLM schedules its own steps: every item is a pass of its own, so each can be
            # aborted alone. Its KV cache is its own, within its own memory settings.
            pass_budget=1,
            continuous=True,
            sequence_slots=int(self._engine.vllm_config.scheduler_config.max_num_seqs),
        )

    async def probe(self) -> None:
        """One 8-token request, online: shorter than a KV-cache block, so it caches nothing."""
        await self._score_one(ScoringTask(token_ids=(0,) * 8, label_ids=(0,)))

    async def _install_layer_capture(self) -> None:
        """Hook the workers' models, then prove the capture on one request; without proof,
        per-layer scores are refused with the reason (``final`` is still served)."""
        answers = await self._engine.collective_rpc("judge_install_layer_capture")
        counts = {count for count, _ in answers}
        if counts != {self.num_layers}:
            raise EngineError(f"layer capture hooked {counts} layers, the model has {self.num_layers}")
        problems = [problem for _, problem in answers if problem]
        if not problems:
            self.supports_layers, self.layers_unavailable = True, None
            try:
                await self._score_one(ScoringTask(token_ids=tuple(range(3, 19)), label_ids=(0,), want_layers=True))
            except EngineError:
                answers = await self._engine.collective_rpc("judge_install_layer_capture")
                problems = [problem for _, problem in answers if problem] or ["the capture failed on a probe"]
        if problems:
            self.supports_layers, self.layers_unavailable = False, problems[0]
            logger.warning("per-layer scores (LAGER) are off: %s", problems[0])

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    def batch_cost(self, batch: Sequence[ScoringTask]) -> int:
        return len(batch)

    def batch_memory(self, batch: Sequence[ScoringTask], cost: int) -> int:
        return 0

    def limit_pass_memory(self, budget: int) -> None:
        """Nothing to plan: vLLM holds its KV cache in blocks of its own."""

    async def reset_prefix_cache(self) -> None:
        if self._engine is not None and self.prefix_reuse:
            await self._engine.reset_prefix_cache()

    async def score(self, batch: Sequence[ScoringTask], *, background: bool = False) -> list[LabelScores]:
        """Every task as its own engine request, at once; except that tasks sharing a prefix
        of ``PREFIX_FIRST_TOKENS`` or more wait for the first of them to finish. Requests
        scheduled in one engine step would each compute the prefix: vLLM's prefix cache
        serves only blocks already computed."""
        leaders = prefix_leaders(batch) if self.prefix_reuse else [None] * len(batch)
        finished = {lead: asyncio.Event() for lead in leaders if lead is not None}
        priority = BACKGROUND_PRIORITY if background else ONLINE_PRIORITY

        async def one(i: int) -> LabelScores:
            if (lead := leaders[i]) is not None:
                await finished[lead].wait()
            try:
                return await self._score_one(batch[i], priority)
            finally:
                if i in finished:
                    finished[i].set()

        return list(await asyncio.gather(*(one(i) for i in range(len(batch)))))

    async def _score_one(self, task: ScoringTask, priority: int = ONLINE_PRIORITY) -> LabelScores:
        from vllm.v1.engine.exceptions import EngineDeadError

        captured = task.per_layer
        if captured and not self.supports_layers:
            raise EngineError(f"per-layer scores are off on this vLLM engine: {self.layers_unavailable}")
        if self._engine is None:
            raise EngineDead("the vLLM engine is not running")
        request_id = f"judge-{next(self._ids)}"
        try:
            root = await self._next_logprobs(
                task.token_ids, task.label_ids, request_id, priority, captured, task.hidden_layers
            )
            rows = [root]
            if task.trie is not None and task.trie.continuations():
                # Each trie node past the root is the prompt plus a label prefix: the prompt's
                # KV cache, filled by the request above, serves them through prefix caching.
                trie = task.trie
                rows += await asyncio.gather(
                    *(
                        self._next_logprobs(task.token_ids + node, children, f"{request_id}-{i}", priority, False)
                        for i, (node, children) in enumerate(zip(trie.continuations(), trie.children[1:], strict=True))
                    )
                )
            layers = await self._layer_logits(request_id) if captured else None
        except EngineDeadError as exc:
            self._dead = True
            raise EngineDead("the vLLM engine died") from exc
        except BaseException:
            if captured:
                # Given up (its client left) or failed after the workers captured its layers:
                # nobody will fetch them, so they go now, not when the store fills.
                self._forget(request_id)
            raise
        logprobs = task.label_logprobs(rows)
        if layers is None:
            return LabelScores(logprobs=logprobs)
        hidden = tuple(tuple(layers[2][layer]) for layer in task.hidden_layers) if task.hidden_layers else None
        if not task.want_layers:
            return LabelScores(logprobs=logprobs, hidden=hidden)
        return LabelScores(logprobs=logprobs, layer_logits=layers[0], layer_logits_normed=layers[1], hidden=hidden)

    def _forget(self, key: str) -> None:
        """Drop a request's captured layers on the workers, in the background (the caller is
        being cancelled)."""
        if self._engine is None:
            return
        forget = asyncio.ensure_future(self._engine.collective_rpc("judge_pop_layer_logits", args=([key],)))
        self._forgetting.add(forget)
        forget.add_done_callback(self._forgotten)

    def _forgotten(self, forget: asyncio.Future[Any]) -> None:
        self._forgetting.discard(forget)
        if not forget.cancelled() and forget.exception() is not None:
            logger.warning("dropping a request's captured layers failed: %s", forget.exception())

    async def critique(
        self, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow], *, background: bool = False
    ) -> list[LabelScores | None]:
        """Every task as its own engine request (``rows`` are not read: a batch is one item,
        and the queue aborts its engine request when the item is given up)."""
        priority = BACKGROUND_PRIORITY if background else ONLINE_PRIORITY
        return list(await asyncio.gather(*(self._critique_one(task, priority) for task in batch)))

    async def _critique_one(self, task: ScoringTask, priority: int) -> LabelScores:
        """Generate with the marker as a stop string, keep the tokens the rule in
        ``service.engines.critique`` keeps (vLLM cuts its text at the stop string, possibly inside
        a token; its token ids run to the token that completed it), then read the labels
        after them as a plain task: the prefix cache serves the prompt and the critique."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        spec = task.critique
        assert spec is not None
        if self._engine is None:
            raise EngineDead("the vLLM engine is not running")
        params = SamplingParams(
            max_tokens=spec.max_tokens,
            temperature=0.0,
            stop=[spec.marker],
            include_stop_str_in_output=True,
            skip_special_tokens=False,
        )
        final = None
        try:
            async for output in self._engine.generate(
                TokensPrompt(prompt_token_ids=list(task.token_ids)),
                params,
                request_id=f"judge-{next(self._ids)}",
                priority=priority,
            ):
                final = output
        except EngineDeadError as exc:
            self._dead = True
            raise EngineDead("the vLLM engine died") from exc
        if final is None or not final.outputs:
            raise EngineError("vLLM returned no generation")
        decode = critique.decoder(self.tokenizer)
        generated, found = critique.truncate(final.outputs[0].token_ids, spec, self._stop_ids, decode)
        scores = await self._score_one(task.after(generated, found), priority)
        return LabelScores(scores.logprobs, critique=critique.outcome(generated, found, decode))

    async def _next_logprobs(
        self,
        token_ids: Sequence[int],
        read: Sequence[int],
        request_id: str,
        priority: int,
        want_layers: bool,
        hidden_layers: Sequence[int] = (),
    ) -> tuple[float, ...]:
        """The full-vocabulary log-probabilities of the tokens ``read`` right after ``token_ids``
        (with ``want_layers``, the worker also keeps the per-layer logits and hidden rows)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        extra = {EXTRA_ARGS_KEY: request_id, HIDDEN_ARGS_KEY: list(hidden_layers)} if want_layers else None
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(read), extra_args=extra)
        final = None
        async for output in self._engine.generate(
            TokensPrompt(prompt_token_ids=list(token_ids)), params, request_id=request_id, priority=priority
        ):
            final = output
        if final is None or not final.outputs or not final.outputs[0].logprobs:
            raise EngineError("vLLM returned no log-probabilities")
        position = final.outputs[0].logprobs[0]
        return tuple(float(position[token].logprob) for token in read)

    async def _layer_logits(
        self, key: str
    ) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...], dict[int, list[float]]]:
        """Fetch a finished request's per-layer label logits from the workers, summing the
        tensor-parallel ranks' slices of the vocabulary, and its hidden rows (every rank
        holds the whole hidden state: the first rank's are taken)."""
        answers = await self._engine.collective_rpc("judge_pop_layer_logits", args=([key],))
        parts = [answer[key] for answer in answers if key in answer]
        if not parts:
            raise EngineError("vLLM captured no per-layer logits for the request")

        def total(which: int) -> tuple[tuple[float, ...], ...]:
            layers = zip(*(part[which] for part in parts), strict=True)  # one row per rank, per layer
            return tuple(tuple(map(sum, zip(*ranks, strict=True))) for ranks in layers)

        return total(0), total(1), {int(layer): row for layer, row in parts[0][2].items()}

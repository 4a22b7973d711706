"""Transformers engine: one batched forward pass per batch, run in a worker thread.

Any decoder-only causal LM that transformers loads can be served, once the load-time
proofs pass: the head and its family's logit transform (``heads``), the decoder layout
for per-layer scores (``layout``) and the batched paths (``probes``) must reproduce the
model's own forward pass. What cannot be proven exact is refused, naming the architecture.
Critique mode generates on the same proven paths (``generation``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers.utils import logging as hf_logging

from service.core.errors import EngineError
from service.core.tasks import CritiqueRow, LabelScores, ScoringTask, common_prefix
from service.engines import critique, failpoints
from service.engines.base import EngineCapabilities
from service.engines.device import torch_device
from service.engines.heads import LabelHead, check_head, load_causal_lm
from service.engines.memory import PassMemory
from service.engines.transformers import probes
from service.engines.transformers.attention import use_grouped_attention
from service.engines.transformers.generation import FairLock, GenerationStopped, GreedyDecoder
from service.engines.transformers.layout import DecoderLayout, find_layout, layer_logits
from service.engines.transformers.packed_linear import pack_linears
from service.engines.transformers.passes import PromptPasses, PromptRun
from service.engines.transformers.prefix_cache import PrefixCache

logger = logging.getLogger(__name__)

_Results = TypeVar("_Results", list[LabelScores], list[LabelScores | None])


def _hidden_rows(states: list[torch.Tensor], row: int, layers: tuple[int, ...]) -> tuple[tuple[float, ...], ...] | None:
    """The scoring-position hidden state of ``row`` at each of ``layers``, in float64."""
    if not layers:
        return None
    return tuple(tuple(states[layer][row].double().cpu().tolist()) for layer in layers)


class TransformersEngine:
    """Scores label tokens with a Hugging Face causal LM, one forward pass at a time (a
    generation's steps and the scoring passes take turns)."""

    def __init__(
        self,
        model_dir: Path,
        name: str,
        pad_token_id: int,
        device: str = "auto",
        dtype: str = "auto",
        prefix_reuse: bool = True,
        prefix_reuse_min_tokens: int = 32,
        prefix_cache_bytes: int = 1 << 30,
        max_batch_tokens: int | None = None,
        packed_linear: bool = True,
        tokenizer: Any = None,
    ) -> None:
        self.name = name
        self.model_dir = model_dir
        self.device = torch_device(device)
        # fp32 on CPU; bf16 on GPU where fp32 would waste memory bandwidth.
        default = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.dtype = default if dtype == "auto" else getattr(torch, dtype)
        self.pad_token_id = pad_token_id
        self.tokenizer = tokenizer  # critique mode's text; from model_dir when not given
        self.generator: GreedyDecoder | None = None  # critique mode's, once loaded
        self.model: Any = None
        self.max_model_len = 0
        self.num_layers = 0
        self._healthy = True
        self.prefix_reuse = prefix_reuse
        # On CPU, the decoder's linear layers on oneDNN's prepacked weights (``packed_linear``).
        self.packed_linear = packed_linear
        self.packed_layers = 0
        self.prefix_reuse_min_tokens = prefix_reuse_min_tokens
        # Prefixes kept across requests (off with reuse off or no budget; the load-time
        # probe turns it off where the model's cache cannot be cut and stacked exactly).
        self.prefix_cache = (
            PrefixCache(prefix_cache_bytes, prefix_reuse_min_tokens) if prefix_reuse and prefix_cache_bytes else None
        )
        # On CPU, padded batches beyond ~2k tokens run slower per item (measured in
        # bench/overhead.py: 16k-token batches gave 0.85 items/s, 2k-token ones 1.46).
        self.pass_budget = max_batch_tokens or (2048 if self.device.type == "cpu" else 16384)
        # What a batch's passes hold (from the model's config, once loaded), and the most one
        # pass may hold: the memory plan's, once the model is warm (``limit_pass_memory``).
        self.pass_memory: PassMemory | None = None
        self.pass_memory_budget = 1 << 62
        # Prompt tokens not recomputed thanks to a shared prefix (for metrics and benchmarks).
        self.prefix_tokens_reused = 0
        self.head: LabelHead | None = None
        self.passes: PromptPasses | None = None
        self.layout: DecoderLayout | None = None
        self.supports_layers = False
        self.layers_unavailable: str | None = "the model is not loaded"
        # Whether left-padded batches equal one-by-one scoring for this model (proven at load).
        self.batches_exact = True
        # Whether labels of several tokens may be read on top of each prompt's KV cache
        # (proven at load); else each label prefix runs as a prompt of its own.
        self.continue_in_cache = True
        # Forward passes (and generation steps) are serialised: one model, one pass at a
        # time, granted in arrival order.
        self._lock = FairLock()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def batch_cost(self, batch: Sequence[ScoringTask]) -> int:
        """Tokens the forward passes compute: on the prefix cache, the fresh prefixes and each
        row's rest padded to the longest; else padded to the longest task (its critique
        included), with a prefix the whole batch shares (see ``_shared_prefix``) counted once."""
        if not batch:
            return 0
        if (cache := self._cache_for(batch)) is not None:
            return cache.plan([task.token_ids for task in batch]).cost([task.length for task in batch])
        padded = max(task.cost for task in batch) * len(batch)
        return padded - (len(batch) - 1) * self._shared_prefix(batch)

    def batch_memory(self, batch: Sequence[ScoringTask], cost: int) -> int:
        """Bytes ``batch``'s passes hold at their peak, ``cost`` being its ``batch_cost``: every
        row's cache over the batch's full width (critique room included), the activations of
        the tokens computed, and with labels of several tokens the smallest pass of their
        trie nodes beside it (``_continuations`` runs the nodes as the budget allows)."""
        if not batch or self.pass_memory is None:
            return 0
        width = max(task.cost for task in batch)
        held = self.pass_memory.prompts(len(batch), width, cost)
        extra = max((len(node) for task in batch if task.trie for node in task.trie.continuations()), default=0)
        if not extra:
            return held
        if not self.continue_in_cache:
            # Each node runs as a prompt of its own, in batches of the original size.
            rows = len(batch)
            return max(held, self.pass_memory.prompts(rows, width + extra, rows * (width + extra)))
        return held + self.pass_memory.nodes(1, width, extra)

    async def start(self) -> EngineCapabilities:
        await asyncio.to_thread(self._load)
        return EngineCapabilities(
            max_model_len=self.max_model_len,
            num_layers=self.num_layers,
            layers_unavailable=self.layers_unavailable,
            pass_budget=self.pass_budget,
        )

    def limit_pass_memory(self, budget: int) -> None:
        self.pass_memory_budget = budget

    async def probe(self) -> None:
        """One token through the model, in its turn: no prefix cache, no counters."""
        await self._in_thread(self._probe)

    def _probe(self) -> list[LabelScores]:
        if self.model is None:
            raise EngineError("model not loaded")
        with self._lock, torch.inference_mode():
            failpoints.block("PASS_BLOCK")
            self.model(input_ids=torch.tensor([[self.pad_token_id]], device=self.device))
        return []

    def _load(self) -> None:
        hf_logging.disable_progress_bar()
        model = load_causal_lm(self.model_dir, self.dtype)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            # Before the proofs below, so that they cover the kernels that serve.
            if self.packed_linear:
                self.packed_layers = pack_linears(model, model.get_decoder())
            grouped = use_grouped_attention(model)
            logger.info(
                "CPU kernels: %d linear layers on oneDNN's packed weights; grouped attention without copies: %s",
                self.packed_layers,
                "on" if grouped else "off",
            )
        self.max_model_len = int(getattr(model.config, "max_position_embeddings", 2048))
        head_bytes = 8 if self.device.type == "cpu" else 4  # the LabelHead's dtype below
        self.pass_memory = PassMemory.of(model.config, torch.finfo(self.dtype).bits // 8, head_bytes)
        # The LM head in float64 on CPU, so label log-probabilities carry no rounding from a
        # 50k-wide matmul and log-softmax; float32 on GPU.
        self.head = LabelHead(model, torch.float64 if self.device.type == "cpu" else torch.float32)
        check_head(model, self.head, self.device)
        self.layout = find_layout(model, self.device)
        self.passes = PromptPasses(self.model, self.layout, self.device, self.pad_token_id)
        self.num_layers = self.layout.num_layers
        self.layers_unavailable = self.layout.layers_unavailable
        self.supports_layers = self.layers_unavailable is None
        if not self.supports_layers:
            logger.warning("per-layer scores (LAGER) are off: %s", self.layers_unavailable)
        probes.prove_paths(self)
        self.generator = greedy_decoder(self)

    async def reset_prefix_cache(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    async def close(self) -> None:
        self.model = None
        self.head = self.layout = self.generator = self.passes = None

    # ``background`` changes nothing here: a pass runs whole, in the order passes come, so
    # the scheduler decides when background passes start (``service.scheduling.background``).
    async def score(self, batch: Sequence[ScoringTask], *, background: bool = False) -> list[LabelScores]:
        return await self._in_thread(lambda: self._forward(batch))

    async def critique(
        self, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow], *, background: bool = False
    ) -> list[LabelScores | None]:
        return await self._in_thread(lambda: self._critique(batch, rows), rows)

    async def _in_thread(self, work: Callable[[], _Results], rows: Sequence[CritiqueRow] = ()) -> _Results:
        running = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            # A pass in its thread cannot be stopped (a generation stops before its next step,
            # once its rows are dropped): hold the queue's slot until it ends, so no second
            # pass queues up behind it.
            for row in rows:
                row.drop()
            await asyncio.gather(running, return_exceptions=True)
            raise

    def _critique(self, batch: Sequence[ScoringTask], rows: Sequence[CritiqueRow]) -> list[LabelScores | None]:
        """Generate, then read the labels after each critique as a plain task (see
        ``ScoringTask.after``) through the scoring path, with every family's fallbacks. A
        row given up during its generation, or once it ended, is not read: None."""
        if self.generator is None:
            raise EngineError("critique mode needs a loaded model with its tokenizer")
        generated = self.generator.generate(batch, rows)
        kept = {row: result for row, result in enumerate(generated) if result is not None and rows[row].wanted()}
        if not kept:
            raise GenerationStopped("the critique was given up")
        scored = self._forward([batch[row].after(ids, found) for row, (ids, found) in kept.items()])
        results: list[LabelScores | None] = [None] * len(batch)
        for (row, (ids, found)), result in zip(kept.items(), scored, strict=True):
            results[row] = LabelScores(result.logprobs, critique=critique.outcome(ids, found, self.generator.decode))
        return results

    def _forward(self, batch: Sequence[ScoringTask]) -> list[LabelScores]:
        if self.model is None:
            raise EngineError("model not loaded")
        if not self.supports_layers and any(task.per_layer for task in batch):
            raise EngineError(f"per-layer scores are off: {self.layers_unavailable}")
        if not self.batches_exact:
            # This model's padded batches are not exact (found at load): one item at a time.
            return [self._score_batch([task])[0] for task in batch]
        return self._score_batch(batch)

    def _score_batch(self, batch: Sequence[ScoringTask]) -> list[LabelScores]:
        assert self.head is not None and self.passes is not None
        want_layers = any(task.want_layers for task in batch)
        want_states = any(task.per_layer for task in batch)
        multi_token = any(task.trie is not None for task in batch)
        continuing = multi_token and self.continue_in_cache
        cache = self._cache_for(batch)
        plan = cache.plan([task.token_ids for task in batch]) if cache is not None else None
        prefix = 0 if plan is not None else self._shared_prefix(batch)
        with self._lock, torch.inference_mode():
            failpoints.block("PASS_BLOCK")
            if cache is not None and plan is not None:
                run, computed, kept = self.passes.cached(batch, plan, want_states, continuing)
                cache.ran([task.token_ids for task in batch], plan, computed, kept)
            elif prefix:
                run = self.passes.with_prefix(batch, prefix, want_states, continuing)
            else:
                run = self.passes.padded(batch, want_states, continuing)
            # The head runs on the scoring position only (what logits_to_keep=1 does), with
            # the family's logit transform, in float64 on CPU, so label log-probabilities
            # carry no fp32 rounding from a 50k-wide matmul and log-softmax.
            logprobs = torch.log_softmax(self.head.logits(run.last), dim=-1).cpu()
            states = run.states if want_layers else None
            layers = layer_logits(self.head, self.layout, states, batch) if states is not None else None
            nodes = self._continuations(batch, run) if continuing else {}
        if multi_token and not continuing:
            nodes = self._replayed_continuations(batch)
        self.prefix_tokens_reused += plan.reused if plan is not None else prefix * (len(batch) - 1)
        return [
            LabelScores(
                logprobs=task.label_logprobs([logprobs[row, list(task.label_ids)].tolist(), *nodes.get(row, [])]),
                layer_logits=layers[0][row] if layers and task.want_layers else None,
                layer_logits_normed=layers[1][row] if layers and task.want_layers else None,
                hidden=_hidden_rows(run.states, row, task.hidden_layers) if run.states is not None else None,
            )
            for row, task in enumerate(batch)
        ]

    def _continuations(self, batch: Sequence[ScoringTask], run: PromptRun) -> dict[int, list[list[float]]]:
        """Each task's label-trie nodes past the root, read in more forward passes on top of
        its prompt's KV cache: the prompt never runs again. Each node row holds a copy of its
        prompt's cache row, so the nodes run as many at a time as the batch's memory budget
        leaves room for beside the prompts' cache. Returns, per batch row, one row of
        log-probabilities (over the node's children) per node, in trie order."""
        assert run.cache is not None and run.mask is not None
        assert self.passes is not None and self.head is not None
        owners: list[int] = []
        tokens: list[tuple[int, ...]] = []
        children: list[tuple[int, ...]] = []
        for row, task in enumerate(batch):
            if task.trie is not None:
                for node, kids in zip(task.trie.continuations(), task.trie.children[1:], strict=True):
                    owners.append(row)
                    tokens.append(node)
                    children.append(kids)
        nodes: dict[int, list[list[float]]] = {}
        step = self._nodes_per_pass(len(batch), run.mask.shape[1], max((len(t) for t in tokens), default=0))
        for begin in range(0, len(owners), step):
            group = owners[begin : begin + step]
            starts = [batch[row].length for row in group]
            hidden = self.passes.continued(run, group, tokens[begin : begin + step], starts)
            logprobs = torch.log_softmax(self.head.logits(hidden), dim=-1).cpu()
            for i, (row, kids) in enumerate(zip(group, children[begin : begin + step], strict=True)):
                nodes.setdefault(row, []).append(logprobs[i, list(kids)].tolist())
        return nodes

    def _nodes_per_pass(self, rows: int, width: int, extra: int) -> int:
        """How many label-trie node rows one pass may hold beside ``rows`` prompt cache rows
        of ``width`` columns, within the batch memory budget (at least one)."""
        if self.pass_memory is None or not extra:
            return 1 << 30
        room = self.pass_memory_budget - self.pass_memory.prompts(rows, width, 0)
        return max(1, room // self.pass_memory.nodes(1, width, extra))

    def _replayed_continuations(self, batch: Sequence[ScoringTask]) -> dict[int, list[list[float]]]:
        """What ``_continuations`` returns, for a model whose KV cache cannot be continued
        exactly: each trie node runs as a prompt of its own (the prompt plus the label
        prefix), through the proven prompt path, in batches of the original size."""
        owners: list[int] = []
        tasks: list[ScoringTask] = []
        for row, task in enumerate(batch):
            if task.trie is not None:
                for node, kids in zip(task.trie.continuations(), task.trie.children[1:], strict=True):
                    owners.append(row)
                    tasks.append(ScoringTask(task.token_ids + node, kids))
        nodes: dict[int, list[list[float]]] = {}
        for start in range(0, len(tasks), len(batch)):
            results = self._forward(tasks[start : start + len(batch)])
            for row, result in zip(owners[start : start + len(batch)], results, strict=True):
                nodes.setdefault(row, []).append(list(result.logprobs))
        return nodes

    def _cache_for(self, batch: Sequence[ScoringTask]) -> PrefixCache | None:
        """The cross-request prefix cache, when ``batch`` runs on it (critiques generate on a
        path of their own)."""
        if not self.prefix_reuse or any(task.critique for task in batch):
            return None
        return self.prefix_cache

    def _shared_prefix(self, batch: Sequence[ScoringTask]) -> int:
        """Tokens every task starts with (leaving each at least one of its own), when
        reusing their KV cache is worth it; else 0."""
        if not self.prefix_reuse or len(batch) < 2 or any(task.critique for task in batch):
            return 0
        first = batch[0].token_ids
        length = min(min(task.length - 1, common_prefix(first, task.token_ids)) for task in batch)
        return length if length >= self.prefix_reuse_min_tokens else 0


def greedy_decoder(engine: TransformersEngine) -> GreedyDecoder | None:
    """The loaded engine's generator, on its proven decoder, head and paths; None (critique
    mode off, with a warning) when the model directory has no tokenizer."""
    if engine.tokenizer is None:
        from transformers import AutoTokenizer

        try:
            engine.tokenizer = AutoTokenizer.from_pretrained(str(engine.model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:  # a bare model directory (tests build such models)
            logger.warning("critique mode is off: the model directory has no tokenizer (%s)", exc)
            return None
    assert engine.layout is not None and engine.head is not None
    layout = engine.layout
    return GreedyDecoder(
        decoder=layout.decoder,
        head=engine.head,
        config=engine.model.config,
        lock=engine._lock,
        device=engine.device,
        pad_token_id=engine.pad_token_id,
        stop_ids=critique.stop_token_ids(engine.tokenizer, engine.model_dir),
        decode=critique.decoder(engine.tokenizer),
        batched=engine.batches_exact and layout.accepts_position_ids,
        cached=engine.continue_in_cache,
        accepts_position_ids=layout.accepts_position_ids,
    )

"""Transformers engine: one batched forward pass per batch, run in a worker thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from service.engines.base import EngineError, LabelScores, ScoringTask, common_prefix

logger = logging.getLogger(__name__)


def _pick_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _hidden_rows(states: list[torch.Tensor], row: int, layers: tuple[int, ...]) -> tuple[tuple[float, ...], ...] | None:
    """The scoring-position hidden state of ``row`` at each of ``layers``, in float64."""
    if not layers:
        return None
    return tuple(tuple(states[layer][row].double().cpu().tolist()) for layer in layers)


@dataclass(slots=True)
class _PromptRun:
    """A batch's prompts after their forward pass: each row's scoring-position hidden
    state, per-layer states when asked, and (to read label continuations on top) the KV
    cache with its attention mask over the cached positions."""

    last: torch.Tensor
    states: list[torch.Tensor] | None
    cache: Any = None
    mask: torch.Tensor | None = None


class TransformersEngine:
    """Scores label tokens with a Hugging Face causal LM."""

    supports_layers = True
    # One model, one forward pass at a time.
    max_inflight_batches = 1

    def __init__(
        self,
        model_dir: Path,
        name: str,
        pad_token_id: int,
        device: str = "auto",
        dtype: str = "auto",
        prefix_reuse: bool = True,
        prefix_reuse_min_tokens: int = 32,
        max_batch_tokens: int | None = None,
    ) -> None:
        self.name = name
        self.model_dir = model_dir
        self.device = _pick_device(device)
        # fp32 on CPU; bf16 on GPU where fp32 would waste memory bandwidth.
        default = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.dtype = default if dtype == "auto" else getattr(torch, dtype)
        self.pad_token_id = pad_token_id
        self.model: Any = None
        self.max_model_len = 0
        self.num_layers = 0
        self._healthy = True
        self.prefix_reuse = prefix_reuse
        self.prefix_reuse_min_tokens = prefix_reuse_min_tokens
        # On CPU, padded batches beyond ~2k tokens run slower per item (measured in
        # bench/overhead.py: 16k-token batches gave 0.85 items/s, 2k-token ones 1.46).
        self.batch_budget = max_batch_tokens or (2048 if self.device.type == "cpu" else 16384)
        # Prompt tokens not recomputed thanks to a shared prefix (for metrics and benchmarks).
        self.prefix_tokens_reused = 0
        self._head_weight: torch.Tensor | None = None
        self._head_bias: torch.Tensor | None = None
        # Forward passes are serialised: one model, one batch at a time.
        self._lock = threading.Lock()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def batch_cost(self, batch: Sequence[ScoringTask]) -> int:
        """Tokens the forward pass computes: padded to the longest task, with a prefix the
        whole batch shares (see ``_shared_prefix``) counted once."""
        if not batch:
            return 0
        padded = max(task.length for task in batch) * len(batch)
        return padded - (len(batch) - 1) * self._shared_prefix(batch)

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        hf_logging.disable_progress_bar()
        model: Any = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=self.dtype, local_files_only=True)
        self.model = model.to(self.device).eval()
        self.max_model_len = int(getattr(model.config, "max_position_embeddings", 2048))
        self.num_layers = int(model.config.num_hidden_layers)
        self._forward([ScoringTask(token_ids=(self.pad_token_id,) * 8, label_ids=(0,), want_layers=True)])

    async def close(self) -> None:
        self.model = None
        self._head_weight = self._head_bias = None

    async def score(self, batch: Sequence[ScoringTask]) -> list[LabelScores]:
        running = asyncio.ensure_future(asyncio.to_thread(self._forward, batch))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            # A forward pass in its thread cannot be stopped: keep this call (and so the
            # queue's batch slot) until it ends, so no second pass queues up behind it.
            await asyncio.gather(running, return_exceptions=True)
            raise

    def _forward(self, batch: Sequence[ScoringTask]) -> list[LabelScores]:
        if self.model is None:
            raise EngineError("model not loaded")
        want_layers = any(task.want_layers for task in batch)
        want_states = want_layers or any(task.hidden_layers for task in batch)
        continuing = any(task.trie is not None for task in batch)
        prefix = self._shared_prefix(batch)
        with self._lock, torch.inference_mode():
            if prefix:
                run = self._run_with_prefix(batch, prefix, want_states, continuing)
            else:
                run = self._run_padded(batch, want_states, continuing)
            # The LM head runs on the scoring position only (what logits_to_keep=1 does), in
            # float64 on CPU, so label log-probabilities carry no fp32 rounding from a
            # 50k-wide matmul and log-softmax.
            logprobs = torch.log_softmax(self._head(run.last), dim=-1).cpu()
            layers = self._layer_logits(run.states, batch) if run.states is not None and want_layers else None
            nodes = self._continuations(batch, run) if continuing else {}
        self.prefix_tokens_reused += prefix * (len(batch) - 1)
        return [
            LabelScores(
                logprobs=task.label_logprobs([logprobs[row, list(task.label_ids)].tolist(), *nodes.get(row, [])]),
                layer_logits=layers[0][row] if layers and task.want_layers else None,
                layer_logits_normed=layers[1][row] if layers and task.want_layers else None,
                hidden=_hidden_rows(run.states, row, task.hidden_layers) if run.states is not None else None,
            )
            for row, task in enumerate(batch)
        ]

    def _continuations(self, batch: Sequence[ScoringTask], run: _PromptRun) -> dict[int, list[list[float]]]:
        """Each task's label-trie nodes past the root, read in one more forward pass on top of
        its prompt's KV cache: the prompt never runs again. Returns, per batch row, one row of
        log-probabilities (over the node's children) per node, in trie order."""
        assert run.cache is not None and run.mask is not None
        owners: list[int] = []
        tokens: list[tuple[int, ...]] = []
        children: list[tuple[int, ...]] = []
        for row, task in enumerate(batch):
            if task.trie is not None:
                for node, kids in zip(task.trie.continuations(), task.trie.children[1:], strict=True):
                    owners.append(row)
                    tokens.append(node)
                    children.append(kids)
        if not owners:
            return {}
        # One cache row per node: its prompt's row, repeated.
        run.cache.batch_select_indices(torch.tensor(owners, device=self.device))
        width = max(len(node) for node in tokens)
        input_ids = torch.full((len(owners), width), self.pad_token_id, dtype=torch.long)
        added = torch.zeros((len(owners), width), dtype=torch.long)
        for i, node in enumerate(tokens):
            input_ids[i, : len(node)] = torch.tensor(node)
            added[i, : len(node)] = 1
        mask = torch.cat([run.mask[owners], added], dim=1)
        # Positions go on from each prompt's own length, whatever padding its cache row holds.
        starts = torch.tensor([batch[row].length for row in owners])
        positions = starts.unsqueeze(1) + torch.arange(width).unsqueeze(0)
        out = self.model.get_decoder()(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=run.cache,
            use_cache=True,
        )
        ends = torch.tensor([len(node) - 1 for node in tokens], device=self.device)
        hidden = out.last_hidden_state[torch.arange(len(owners), device=self.device), ends, :]
        logprobs = torch.log_softmax(self._head(hidden), dim=-1).cpu()
        nodes: dict[int, list[list[float]]] = {}
        for i, (row, kids) in enumerate(zip(owners, children, strict=True)):
            nodes.setdefault(row, []).append(logprobs[i, list(kids)].tolist())
        return nodes

    def _shared_prefix(self, batch: Sequence[ScoringTask]) -> int:
        """Tokens every task starts with (leaving each at least one of its own), when
        reusing their KV cache is worth it; else 0."""
        if not self.prefix_reuse or len(batch) < 2:
            return 0
        first = batch[0].token_ids
        length = min(min(task.length - 1, common_prefix(first, task.token_ids)) for task in batch)
        return length if length >= self.prefix_reuse_min_tokens else 0

    def _run_padded(self, batch: Sequence[ScoringTask], want_layers: bool, keep_cache: bool = False) -> _PromptRun:
        """One left-padded forward pass; the scoring position is the last column."""
        from transformers import DynamicCache

        width = max(task.length for task in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, task in enumerate(batch):
            input_ids[row, width - task.length :] = torch.tensor(task.token_ids)
            mask[row, width - task.length :] = 1
        # A plain forward counts positions from the first column; left padding needs
        # positions counted from each row's first real token.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = any(task.length != width for task in batch)
        cache = DynamicCache(config=self.model.config) if keep_cache else None
        out = self.model.get_decoder()(
            input_ids=input_ids.to(self.device),
            # Without padding, the plain causal path is the model's reference computation.
            attention_mask=mask.to(self.device) if padded else None,
            position_ids=positions.to(self.device) if padded else None,
            output_hidden_states=want_layers,
            past_key_values=cache,
            use_cache=keep_cache,
        )
        states = [h[:, -1, :] for h in out.hidden_states] if want_layers else None
        return _PromptRun(out.last_hidden_state[:, -1, :], states, cache, mask)

    def _run_with_prefix(
        self, batch: Sequence[ScoringTask], prefix: int, want_layers: bool, keep_cache: bool = False
    ) -> _PromptRun:
        """Run the shared prefix once, repeat its KV cache across the batch, then run the
        right-padded suffixes on top; each row's scoring position is its last real token."""
        from transformers import DynamicCache

        decoder = self.model.get_decoder()
        cache = DynamicCache(config=self.model.config)
        head = torch.tensor([batch[0].token_ids[:prefix]], device=self.device)
        decoder(input_ids=head, past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(len(batch))
        tails = [task.token_ids[prefix:] for task in batch]
        width = max(len(tail) for tail in tails)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), prefix + width), dtype=torch.long)
        mask[:, :prefix] = 1
        for row, tail in enumerate(tails):
            input_ids[row, : len(tail)] = torch.tensor(tail)
            mask[row, prefix : prefix + len(tail)] = 1
        positions = (prefix + torch.arange(width)).unsqueeze(0).expand(len(batch), -1)
        out = decoder(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=want_layers,
        )
        rows = torch.arange(len(batch), device=self.device)
        ends = torch.tensor([len(tail) - 1 for tail in tails], device=self.device)
        states = [h[rows, ends, :] for h in out.hidden_states] if want_layers else None
        return _PromptRun(out.last_hidden_state[rows, ends, :], states, cache if keep_cache else None, mask)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of [B, H] hidden states, float64 on CPU."""
        if self._head_weight is None:
            head = self.model.get_output_embeddings()
            dtype = torch.float64 if self.device.type == "cpu" else torch.float32
            weight = head.weight.detach().to(dtype)
            bias = head.bias.detach().to(dtype) if getattr(head, "bias", None) is not None else None
            self._head_weight, self._head_bias = weight, bias
        return torch.nn.functional.linear(hidden.to(self._head_weight.dtype), self._head_weight, self._head_bias)

    def _layer_logits(
        self, states: list[torch.Tensor], batch: Sequence[ScoringTask]
    ) -> tuple[list[tuple[tuple[float, ...], ...]], list[tuple[tuple[float, ...], ...]]]:
        """Label logits of every layer at the scoring position, raw and final-normed.

        ``states``: one [B, H] tensor per hidden-states entry. Only the label rows of the
        LM head are used: [layers, hidden] @ [hidden, labels].
        """
        assert self._head_weight is not None
        norm = self.model.get_decoder().norm
        # The last entry already carries the final norm; keep it as the model emits it.
        stacked = torch.stack(states, dim=1)  # [B, L+1, H]
        normed = torch.cat([norm(stacked[:, :-1, :]), stacked[:, -1:, :]], dim=1)
        stacked, normed = stacked.to(self._head_weight.dtype), normed.to(self._head_weight.dtype)
        raw_out, normed_out = [], []
        for row, task in enumerate(batch):
            ids = list(task.label_ids)
            weight = self._head_weight[ids]  # [K, H]
            bias = self._head_bias[ids] if self._head_bias is not None else None
            raw = torch.nn.functional.linear(stacked[row], weight, bias)
            lens = torch.nn.functional.linear(normed[row], weight, bias)
            raw_out.append(tuple(map(tuple, raw.tolist())))
            normed_out.append(tuple(map(tuple, lens.tolist())))
        return raw_out, normed_out

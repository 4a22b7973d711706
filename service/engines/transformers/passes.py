"""The transformers engine's forward passes over a batch's prompts.

Three shapes, each proven against the model's own forward pass at load (``probes``):
- ``padded``: left-padded prompts in one pass; the scoring position is the last column.
- ``with_prefix``: a prefix the whole batch shares runs once, its KV cache is repeated,
  and the right-padded rests run on top.
- ``cached``: each row runs on top of its own cached prefix (``prefix_cache``), of any
  length, the prefixes right-aligned before the right-padded rests; prefixes the plan
  names fresh are computed (and kept) first.
Each returns a ``PromptRun``: the scoring-position hidden states and, to continue labels
of several tokens, the KV cache with its attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.core.errors import EngineError
from service.core.tasks import ScoringTask
from service.engines.transformers.layout import DecoderLayout
from service.engines.transformers.prefix_cache import KV, CachePlan, cacheable, passes_by_rest, row_kv, stacked


@dataclass(slots=True)
class PromptRun:
    """A batch's prompts after their forward pass: each row's scoring-position hidden
    state, per-layer states when asked, and (to read label continuations on top) the KV
    cache with its attention mask over the cached positions."""

    last: torch.Tensor
    states: list[torch.Tensor] | None
    cache: Any = None
    mask: torch.Tensor | None = None


@dataclass(slots=True)
class PromptPasses:
    """The passes of one loaded model."""

    model: Any
    layout: DecoderLayout
    device: torch.device
    pad_token_id: int

    def padded(self, batch: Sequence[ScoringTask], want_layers: bool, keep_cache: bool = False) -> PromptRun:
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
        # Without padding, the plain causal path is the model's reference computation.
        extra: dict[str, Any] = {"attention_mask": mask.to(self.device)} if padded else {}
        if padded and self.layout.accepts_position_ids:
            extra["position_ids"] = positions.to(self.device)
        out = self.layout.decoder(
            input_ids=input_ids.to(self.device),
            output_hidden_states=want_layers,
            past_key_values=cache,
            use_cache=keep_cache,
            **extra,
        )
        states = [h[:, -1, :] for h in out.hidden_states] if want_layers else None
        return PromptRun(out.last_hidden_state[:, -1, :], states, cache, mask)

    def with_prefix(
        self, batch: Sequence[ScoringTask], prefix: int, want_layers: bool, keep_cache: bool = False
    ) -> PromptRun:
        """Run the shared prefix once, repeat its KV cache across the batch, then run the
        right-padded suffixes on top; each row's scoring position is its last real token."""
        from transformers import DynamicCache

        decoder = self.layout.decoder
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
        extra = {"position_ids": positions.to(self.device)} if self.layout.accepts_position_ids else {}
        out = decoder(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            past_key_values=cache,
            **extra,
            use_cache=True,
            output_hidden_states=want_layers,
        )
        rows = torch.arange(len(batch), device=self.device)
        ends = torch.tensor([len(tail) - 1 for tail in tails], device=self.device)
        states = [h[rows, ends, :] for h in out.hidden_states] if want_layers else None
        return PromptRun(out.last_hidden_state[rows, ends, :], states, cache if keep_cache else None, mask)

    def cached(
        self, batch: Sequence[ScoringTask], plan: CachePlan, want_layers: bool, keep_cache: bool = False
    ) -> tuple[PromptRun, list[KV], list[KV | None]]:
        """The plan's fresh prefixes first, then the rows on their bases, each in passes
        grouped by the tokens they run (the rows in one pass when ``keep_cache``, for label
        continuations). Returns the run, the fresh prefixes' keys and values (in plan order)
        and those of the rows the plan keeps whole (None for the others), for the cache to keep."""
        fresh: dict[int, KV] = {}
        for group in passes_by_rest(plan.extents):
            bases = [(plan.fresh[i].base.kv, plan.fresh[i].base.start) for i in group]
            tokens = [plan.fresh[i].tokens for i in group]
            _, cache, _, width = self._extend(tokens, bases, False)
            for row, (i, ids, (_, start)) in enumerate(zip(group, tokens, bases, strict=True)):
                fresh[i] = row_kv(cache, row, width - start, width + len(ids) - start)
        computed = [fresh[i] for i in range(len(plan.fresh))]
        rows = [(computed[base.fresh] if base.fresh is not None else base.kv, base.start) for base in plan.rows]
        rests = plan.rests([task.length for task in batch])
        groups = [list(range(len(batch)))] if keep_cache else passes_by_rest(rests)
        kept: list[KV | None] = [None] * len(batch)
        runs = []
        for group in groups:
            keep = keep_cache or any(plan.keep[i] for i in group)
            if any(rows[i][1] for i in group):
                out, cache, mask, width = self._extend(
                    [batch[i].token_ids for i in group], [rows[i] for i in group], want_layers
                )
                ends = torch.tensor([rests[i] - 1 for i in group], device=self.device)
                picked = (torch.arange(len(group), device=self.device), ends)
                states = [h[picked] for h in out.hidden_states] if want_layers else None
                run = PromptRun(out.last_hidden_state[picked], states, cache, mask)
                # Base right-aligned before ``width``, the rest after it.
                spans = [(width - rows[i][1], width + rests[i]) for i in group]
            else:
                run = self.padded([batch[i] for i in group], want_layers, keep)
                width = max(rests[i] for i in group)
                spans = [(width - rests[i], width) for i in group]  # left-padded
            for j, i in enumerate(group):
                if plan.keep[i]:
                    kept[i] = row_kv(run.cache, j, *spans[j])
            runs.append(run)
        order = [i for group in groups for i in group]
        if len(runs) == 1 and order == sorted(order):
            run = runs[0]
            return PromptRun(run.last, run.states, run.cache if keep_cache else None, run.mask), computed, kept
        # Back to batch order: row i of the batch is row rank[i] of the passes, concatenated.
        rank = torch.empty(len(order), dtype=torch.long, device=self.device)
        rank[torch.tensor(order, device=self.device)] = torch.arange(len(order), device=self.device)
        last = torch.cat([run.last for run in runs])[rank]
        layers = None
        if want_layers:
            depth = len(runs[0].states or [])
            layers = [torch.cat([run.states[n] for run in runs if run.states])[rank] for n in range(depth)]
        return PromptRun(last, layers), computed, kept

    def continued(
        self, run: PromptRun, owners: Sequence[int], tokens: Sequence[tuple[int, ...]], starts: Sequence[int]
    ) -> torch.Tensor:
        """One pass of label-trie nodes on top of their prompts' cache rows (``owners``: each
        node's row of ``run``), each on a copy of its row, so ``run``'s cache stays whole for
        the next group. ``starts``: each owner's prompt length, where the node's positions
        go on. Returns each node's hidden state at its last token."""
        from transformers import DynamicCache

        assert run.cache is not None and run.mask is not None
        picked = torch.tensor(owners, device=self.device)
        # Built inline, holding no reference of its own: each layer's copy is freed as the
        # pass appends the label tokens to it, so a layer holds one copy at a time, not two.
        cache = DynamicCache(
            ddp_cache_data=((layer.keys[picked], layer.values[picked]) for layer in run.cache.layers),
            config=self.model.config,
        )
        width = max(len(node) for node in tokens)
        input_ids = torch.full((len(owners), width), self.pad_token_id, dtype=torch.long)
        added = torch.zeros((len(owners), width), dtype=torch.long)
        for i, node in enumerate(tokens):
            input_ids[i, : len(node)] = torch.tensor(node)
            added[i, : len(node)] = 1
        mask = torch.cat([run.mask[list(owners)], added], dim=1)
        # Positions go on from each prompt's own length, whatever padding its cache row holds.
        positions = torch.tensor(list(starts)).unsqueeze(1) + torch.arange(width).unsqueeze(0)
        # Without explicit positions (a family whose decoder takes none), the prompt rows
        # hold no padding: the engine sends such tasks one at a time.
        extra = {"position_ids": positions.to(self.device)} if self.layout.accepts_position_ids else {}
        out = self.layout.decoder(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        ends = torch.tensor([len(node) - 1 for node in tokens], device=self.device)
        return out.last_hidden_state[torch.arange(len(owners), device=self.device), ends, :]

    def _extend(
        self, prompts: Sequence[tuple[int, ...]], bases: Sequence[tuple[KV | None, int]], want_layers: bool
    ) -> tuple[Any, Any, torch.Tensor, int]:
        """One pass of each prompt's tokens past its base's ``start``, on top of the base's
        keys and values: the bases right-aligned in ``width`` cache columns (the left padding
        masked out), the rests right-padded after them, positions counted from each base's
        end. Returns the output, the cache, the attention mask and ``width``."""
        from transformers import DynamicCache

        width = max(start for _, start in bases)
        tails = [ids[start:] for ids, (_, start) in zip(prompts, bases, strict=True)]
        length = max(len(tail) for tail in tails)
        input_ids = torch.full((len(prompts), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width + length), dtype=torch.long)
        for row, (tail, (_, start)) in enumerate(zip(tails, bases, strict=True)):
            input_ids[row, : len(tail)] = torch.tensor(tail)
            mask[row, width - start : width + len(tail)] = 1
        starts = torch.tensor([start for _, start in bases])
        positions = starts.unsqueeze(1) + torch.arange(length).unsqueeze(0)
        like = next((kv for kv, start in bases if kv is not None and start), None)
        cache = DynamicCache(ddp_cache_data=stacked(bases, width, like) if like else None, config=self.model.config)
        # Stacking cuts and left-pads each layer's keys and values, and rows start at
        # different positions: only plain full-attention layers and explicit positions allow it.
        if not cacheable(cache) or not self.layout.accepts_position_ids:
            raise EngineError("this model's KV cache cannot hold prefixes across requests")
        out = self.layout.decoder(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=want_layers,
        )
        return out, cache, mask, width

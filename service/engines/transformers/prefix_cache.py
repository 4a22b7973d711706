"""The transformers engine's cross-request prefix cache: KV caches of recent prompt prefixes.

Judge prompts share long prefixes across requests: the system text, the task, the rubric
and a dialogue context come before each response. The cache keeps the KV cache of such
prefixes, bounded in bytes, least recently used first out, and plans each batch on it:

- A prompt that starts with a cached prefix (32+ tokens by default) runs only the rest of
  its tokens, on top of that prefix's keys and values. Any prefix of a cached entry is as
  good as a shorter entry: keys and values at a position depend only on the tokens before it.
- A prefix that a prompt shares with another prompt of its batch, or with a recent prompt,
  and that reaches well past what is cached (the point where two prompts part), is computed
  once and kept: that is the natural unit, the rendered part before the response.
- A prompt that ran mostly uncached (a new dialogue context, say) is kept whole for a while,
  in a smaller tier of recent prompts: the next prompt that shares its context starts from
  it, and the shared part is then kept as a prefix of its own.

It holds only caches whose layers are plain full-attention key/value layers (sliding-window
and recurrent layers cannot be cut at a position); the engine proves the path at load.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch

from service.core.tasks import common_prefix

# Per layer, the keys and values of one prefix: [1, heads, tokens, head_dim] each.
KV = tuple[tuple[torch.Tensor, torch.Tensor], ...]

# How many recent prompts (their tokens only) are remembered to find prefixes worth keeping.
RECENT_PROMPTS = 64
# The share of the budget for whole recent prompts; the rest holds shared prefixes.
PROMPT_TIER_SHARE = 0.25
# A pass costs about this many tokens' worth of work beyond its tokens (reading the weights
# once): rows are split into passes by the length they run only when that saves more.
PASS_OVERHEAD_TOKENS = 64


@dataclass(frozen=True, slots=True)
class Base:
    """Where a row's pass starts: the first ``start`` tokens come from ``kv`` (the cached
    entry ``key``; ``whole`` when it is a recent prompt's), or from the batch's ``fresh``
    prefix of that index; none when ``start`` is 0."""

    start: int = 0
    key: tuple[int, ...] | None = None
    kv: KV | None = None
    fresh: int | None = None
    whole: bool = False


@dataclass(frozen=True, slots=True)
class Fresh:
    """A prefix to compute and keep before the batch runs, itself on top of ``base``."""

    tokens: tuple[int, ...]
    base: Base


@dataclass(frozen=True, slots=True)
class CachePlan:
    """How a batch runs on the cache: the prefixes to compute first, each row's base, which
    rows found their base already cached, and which rows to keep whole afterwards."""

    fresh: tuple[Fresh, ...]
    rows: tuple[Base, ...]
    hits: tuple[bool, ...]
    keep: tuple[bool, ...]

    def rests(self, lengths: Sequence[int]) -> list[int]:
        """The tokens each row runs past its base."""
        return [length - base.start for length, base in zip(lengths, self.rows, strict=True)]

    @property
    def extents(self) -> list[int]:
        """The tokens each fresh prefix runs past its own base."""
        return [len(f.tokens) - f.base.start for f in self.fresh]

    def cost(self, lengths: Sequence[int]) -> int:
        """Tokens the passes compute: the fresh prefixes, then the rows, each grouped into
        passes (see ``passes_by_rest``) padded to their longest."""
        return sum(_padded(runs) for runs in (self.extents, self.rests(lengths)))

    @property
    def reused(self) -> int:
        """Prompt tokens not recomputed: the rows' cached starts, less what the fresh
        prefixes computed for them."""
        return sum(base.start for base in self.rows) - sum(self.extents)


def passes_by_rest(rests: Sequence[int]) -> list[list[int]]:
    """Rows (indices) grouped into passes: sorted by the tokens they run, cut where padding
    short rows to a long one costs more than another pass. Exact over contiguous cuts of the
    sorted rows (a small dynamic programme)."""
    order = sorted(range(len(rests)), key=lambda i: rests[i])
    best = [0.0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for begin in range(end):
            cost = best[begin] + PASS_OVERHEAD_TOKENS + rests[order[end - 1]] * (end - begin)
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def _padded(runs: Sequence[int]) -> int:
    """Tokens computed for ``runs`` in the passes ``passes_by_rest`` groups them into."""
    return sum(max(runs[i] for i in group) * len(group) for group in passes_by_rest(runs))


def kv_bytes(kv: KV) -> int:
    return sum(k.nbytes + v.nbytes for k, v in kv)


def cacheable(cache: Any) -> bool:
    """Whether every layer of a transformers cache is a plain full-attention key/value layer,
    which can be cut at any position and stacked with others."""
    from transformers.cache_utils import DynamicLayer

    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def cut(kv: KV, end: int) -> KV:
    """The first ``end`` positions of ``kv``, as a contiguous copy."""
    return tuple((k[:, :, :end].clone(), v[:, :, :end].clone()) for k, v in kv)


def row_kv(cache: Any, row: int, begin: int, end: int) -> KV:
    """Row ``row``'s keys and values at cache positions ``begin:end``, as a contiguous copy."""
    return tuple(
        (layer.keys[row : row + 1, :, begin:end].clone(), layer.values[row : row + 1, :, begin:end].clone())
        for layer in cache.layers
    )


def stacked(
    bases: Sequence[tuple[KV | None, int]], width: int, like: KV
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One batch's prefix keys and values, ``width`` positions per row, layer by layer: each
    row's first ``start`` tokens of its ``kv`` right-aligned, zeros (masked out) before them.
    A generator: the cache copies each layer as it takes it in, so only one layer's stack
    is held beside the copies, not the whole batch's twice."""
    for layer, (k0, v0) in enumerate(like):
        shape = (len(bases), k0.shape[1], width, k0.shape[3])
        keys = k0.new_zeros(shape)
        values = v0.new_zeros((len(bases), v0.shape[1], width, v0.shape[3]))
        for row, (kv, start) in enumerate(bases):
            if kv is not None and start:
                keys[row, :, width - start :] = kv[layer][0][0, :, :start]
                values[row, :, width - start :] = kv[layer][1][0, :, :start]
        yield keys, values


class _Tier:
    """Entries keyed by their tokens, least recently used first out, within ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self.keys: list[tuple[int, ...]] = []  # sorted
        self.bytes = 0

    def longest(self, prompt: tuple[int, ...]) -> tuple[int, tuple[int, ...] | None]:
        """The entry sharing the most tokens with ``prompt``, leaving it one of its own. In
        sorted order, the longest common prefix with any key is reached by a neighbour."""
        best, found = 0, None
        at = bisect.bisect_left(self.keys, prompt)
        for key in self.keys[max(at - 1, 0) : at + 1]:
            shared = min(common_prefix(key, prompt), len(prompt) - 1)
            if shared > best:
                best, found = shared, key
        return best, found

    def put(self, tokens: tuple[int, ...], kv: KV) -> None:
        size = kv_bytes(kv)
        if size > self.budget or tokens in self.entries:
            return
        while self.entries and self.bytes + size > self.budget:
            old, old_kv = self.entries.popitem(last=False)
            self.keys.pop(bisect.bisect_left(self.keys, old))
            self.bytes -= kv_bytes(old_kv)
        self.entries[tokens] = kv
        bisect.insort(self.keys, tokens)
        self.bytes += size

    def touch(self, key: tuple[int, ...] | None) -> None:
        if key is not None and key in self.entries:
            self.entries.move_to_end(key)

    def clear(self) -> None:
        self.entries.clear()
        self.keys.clear()
        self.bytes = 0


class PrefixCache:
    """KV caches of prompt prefixes and of recent whole prompts, within ``budget_bytes``.

    ``plan`` is called from the event loop (to cost a batch) and from the engine's thread
    (to run it); a lock keeps the store consistent between them.
    """

    def __init__(self, budget_bytes: int, min_tokens: int) -> None:
        self.min_tokens = min_tokens
        whole = int(budget_bytes * PROMPT_TIER_SHARE)
        self._prefixes = _Tier(budget_bytes - whole)
        self._prompts = _Tier(whole)
        self._recent: deque[tuple[int, ...]] = deque()
        self._recent_sorted: list[tuple[int, ...]] = []
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def entries(self) -> int:
        return len(self._prefixes.entries) + len(self._prompts.entries)

    @property
    def bytes(self) -> int:
        return self._prefixes.bytes + self._prompts.bytes

    def clear(self) -> None:
        """Drop every entry and recent prompt, and start the counters again."""
        with self._lock:
            self.hits = self.misses = 0
            self._prefixes.clear()
            self._prompts.clear()
            self._recent.clear()
            self._recent_sorted.clear()

    def plan(self, prompts: Sequence[tuple[int, ...]]) -> CachePlan:
        """Each prompt's base: its longest cached prefix, or a prefix it shares with another
        prompt of the batch or a recent one, to compute first when it reaches at least
        ``min_tokens`` past what is cached. Prefixes within ``min_tokens`` of each other
        collapse to the shortest, so near-identical prompts share one fresh prefix."""
        with self._lock:
            cached = [self._cached_base(p) for p in prompts]
            shared = self._longest_shared(prompts)
        targets = {
            p[:share]
            for p, share, base in zip(prompts, shared, cached, strict=True)
            if share >= self.min_tokens and share >= base.start + self.min_tokens
        }
        fresh: dict[tuple[int, ...], int] = {}
        fresh_list: list[Fresh] = []
        rows: list[Base] = []
        for prompt, base in zip(prompts, cached, strict=True):
            pick = None
            for target in sorted((t for t in targets if prompt[: len(t)] == t), key=len):
                if len(target) - (len(pick) if pick else base.start) >= self.min_tokens:
                    pick = target
            if pick is None:
                rows.append(base)
                continue
            if pick not in fresh:
                fresh[pick] = len(fresh_list)
                fresh_list.append(Fresh(pick, base))
            rows.append(Base(len(pick), fresh=fresh[pick]))
        # A row that ran mostly on its own tokens is kept whole: its context is new.
        keep = [len(p) - row.start >= max(self.min_tokens, len(p) // 2) for p, row in zip(prompts, rows, strict=True)]
        hits = [row.kv is not None for row in rows]
        return CachePlan(tuple(fresh_list), tuple(rows), tuple(hits), tuple(keep))

    def _cached_base(self, prompt: tuple[int, ...]) -> Base:
        """The longest cached start of ``prompt``, from a shared prefix or a recent whole
        prompt, when it reaches ``min_tokens``."""
        start, key = self._prefixes.longest(prompt)
        whole_start, whole_key = self._prompts.longest(prompt)
        if whole_start > start:
            start, key = whole_start, whole_key
        if start < self.min_tokens or key is None:
            return Base()
        whole = key is whole_key and whole_start == start
        return Base(start, key, (self._prompts if whole else self._prefixes).entries[key], whole=whole)

    def _longest_shared(self, prompts: Sequence[tuple[int, ...]]) -> list[int]:
        """For each prompt, the most tokens it shares with another prompt of the batch or a
        recent prompt, leaving it one of its own (sorted neighbours reach the longest)."""
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        shared = [0] * len(prompts)
        for a, b in pairwise(order):
            common = common_prefix(prompts[a], prompts[b])
            shared[a], shared[b] = max(shared[a], common), max(shared[b], common)
        for i, prompt in enumerate(prompts):
            at = bisect.bisect_left(self._recent_sorted, prompt)
            for other in self._recent_sorted[max(at - 1, 0) : at + 1]:
                if other != prompt:
                    shared[i] = max(shared[i], common_prefix(other, prompt))
            shared[i] = min(shared[i], len(prompt) - 1)
        return shared

    def ran(
        self, prompts: Sequence[tuple[int, ...]], plan: CachePlan, computed: Sequence[KV], kept: Sequence[KV | None]
    ) -> None:
        """After a batch: keep the fresh prefixes (``computed``, in plan order) and the rows
        the plan keeps whole (``kept``, per row); a row that started from a recent whole
        prompt makes the part they share a prefix of its own; mark what was used as recent;
        remember the prompts; count hits and misses."""
        with self._lock:
            for fresh, kv in zip(plan.fresh, computed, strict=True):
                self._prefixes.put(fresh.tokens, kv)
            for prompt, base, whole in zip(prompts, plan.rows, kept, strict=True):
                if base.whole and base.kv is not None:
                    self._prefixes.put(prompt[: base.start], cut(base.kv, base.start))
                self._prefixes.touch(base.key)
                self._prompts.touch(base.key)
                if whole is not None:
                    self._prompts.put(prompt, whole)
                self._remember(prompt)
            self.hits += sum(plan.hits)
            self.misses += len(plan.hits) - sum(plan.hits)

    def _remember(self, prompt: tuple[int, ...]) -> None:
        if prompt in self._recent:
            return
        self._recent.append(prompt)
        bisect.insort(self._recent_sorted, prompt)
        if len(self._recent) > RECENT_PROMPTS:
            old = self._recent.popleft()
            self._recent_sorted.pop(bisect.bisect_left(self._recent_sorted, old))

"""Benchmark figures with their bootstrap 95% intervals, from the raw samples each report keeps.

Throughput. A timed run records when each item's request was sent and answered
(``start_s``, ``done_s``: seconds from the start of the run). Every moment of the run is
split equally among the requests in flight then, and an item's share is what its request
collected over its lifetime: a batch's time split among its items, a closed-loop
request's latency over the C requests in flight beside it (Little's law), the drain at
the end of a run included. The shares sum to the time anything was in flight (the wall
time, less a lone client's gaps between requests), so items/s = 1 / mean(share), whether
C clients, batches run one after another or one burst of requests produced it. Its
interval resamples the items' shares. The items/s ratio of two setups run on the same
items resamples one index array for both: paired by item. (Items that all run in one
batch have equal shares: their interval shows only the spread within that run.)

Latency: the median and the 99th percentile (nearest rank) of the per-request latencies,
each with an interval over requests. Below 100 requests the nearest-rank 99th percentile
is the largest latency, so it is reported as what it is: ``max_ms``.

Figures from a few repeats (start-up time, peak memory, seconds per call) are the mean of
the repeats, with an interval over repeats.

Every figure ``x`` comes with ``x_ci: [low, high]``; the reports keep the samples, so any
interval can be recomputed.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.offline import intervals

# Fewer requests than this: the nearest-rank 99th percentile is the maximum.
TAIL_REQUESTS = 100


def shares(start_s: Sequence[float], done_s: Sequence[float]) -> np.ndarray:
    """Each item's share of the wall time: every moment split equally among the requests in
    flight then, summed over the item's request from ``start_s`` to ``done_s``. The shares
    sum to the time any request was in flight."""
    start, done = np.asarray(start_s, dtype=float), np.asarray(done_s, dtype=float)
    edges = np.unique(np.concatenate([start, done]))
    out = np.zeros(len(start))
    for left, right in itertools.pairwise(edges):
        active = (start <= left) & (done >= right)
        if active.any():
            out[active] += (right - left) / active.sum()
    return out


def rate(share: Sequence[float], work: Sequence[float] | None = None) -> tuple[float, list[float]]:
    """Items (or ``work``, e.g. generated tokens, per item) per second of the items' shares,
    and its interval over items."""
    seconds = np.asarray(share, dtype=float)
    amount = np.ones(len(seconds)) if work is None else np.asarray(work, dtype=float)

    def per_second(idx: np.ndarray) -> float:
        total = seconds[idx].sum()
        return float(amount[idx].sum() / total) if total > 0 else math.nan

    return per_second(np.arange(len(seconds))), list(intervals.bootstrap(per_second, len(seconds)))


def latency(latencies_s: Sequence[float]) -> dict[str, Any]:
    """p50 and p99 (``max_ms`` below 100 requests) in ms, with intervals over requests."""
    ms = 1000 * np.asarray(latencies_s, dtype=float)
    count = len(ms)
    tail = "p99_ms" if count >= TAIL_REQUESTS else "max_ms"

    # Nearest rank: the ceil(0.99 n)-th smallest, which is the largest when n < 100.
    rank = math.ceil(round(0.99 * count, 9)) - 1

    def both(idx: np.ndarray) -> dict[str, float]:
        ordered = np.sort(ms[idx])
        return {"p50_ms": float(np.median(ordered)), tail: float(ordered[rank])}

    return {"requests": count, **intervals.with_intervals(both, count)}


def tail_key(row: Mapping[str, Any]) -> str:
    """``p99_ms`` or ``max_ms``, whichever the row has (older reports: ``p99_ms``)."""
    return "p99_ms" if "p99_ms" in row else "max_ms"


def run(start_s: Mapping[str, float], done_s: Mapping[str, float], latencies_s: Sequence[float]) -> dict[str, Any]:
    """The figures of one timed run, items/s and latency, and the samples they come from:
    per item id, when its request was sent and answered; every request's latency."""
    ids = list(done_s)
    value, bounds = rate(shares([start_s[i] for i in ids], [done_s[i] for i in ids]))
    return {
        "items_per_s": value,
        "items_per_s_ci": bounds,
        **latency(latencies_s),
        "item_ids": ids,
        "start_s": [start_s[i] for i in ids],
        "done_s": [done_s[i] for i in ids],
        "latencies_ms": [1000 * x for x in latencies_s],
    }


def describe(row: Mapping[str, Any]) -> str:
    """A ``run`` row's items/s and latency, each with its interval, for printing."""
    tail = tail_key(row)
    return (
        f"{intervals.fmt(row['items_per_s'], row['items_per_s_ci'], 2)} items/s  "
        f"p50 {intervals.fmt(row['p50_ms'], row['p50_ms_ci'], 0)} ms  "
        f"{tail.removesuffix('_ms')} {intervals.fmt(row[tail], row[tail + '_ci'], 0)} ms"
    )


def item_shares(row: Mapping[str, Any], tag: Hashable = None) -> dict[Hashable, float]:
    """The share of every item of a ``run`` row, keyed by item id (or by (tag, id))."""
    keys = row["item_ids"] if tag is None else [(tag, i) for i in row["item_ids"]]
    return dict(zip(keys, shares(row["start_s"], row["done_s"]).tolist(), strict=True))


def rate_ratio(numerator: Mapping[Hashable, float], denominator: Mapping[Hashable, float]) -> tuple[float, list[float]]:
    """items/s of one setup over another's, from their items' shares, paired by item: the
    same resampled items for both."""
    keys = [key for key in denominator if key in numerator]
    top, bottom = np.array([numerator[k] for k in keys]), np.array([denominator[k] for k in keys])

    def ratio(idx: np.ndarray) -> float:
        spent = top[idx].sum()
        return float(bottom[idx].sum() / spent) if spent > 0 else math.nan

    return ratio(np.arange(len(keys))), list(intervals.bootstrap(ratio, len(keys)))


def mean(values: Sequence[float]) -> tuple[float, list[float]]:
    """The mean of some repeats and its interval over repeats."""
    return float(np.mean(values)), list(intervals.mean_interval(values))


def ratio_of_means(top: Sequence[float], bottom: Sequence[float]) -> tuple[float, list[float]]:
    """mean(top) / mean(bottom) of two unpaired samples, each resampled on its own."""
    a, b = np.asarray(top, dtype=float), np.asarray(bottom, dtype=float)

    def ratio(i: np.ndarray, j: np.ndarray) -> float:
        return float(a[i].mean() / b[j].mean())

    bounds = intervals.bootstrap_independent(ratio, [len(a), len(b)])
    return ratio(np.arange(len(a)), np.arange(len(b))), list(bounds)


def write(path: Path, report: Mapping[str, Any]) -> None:
    """The report as indented JSON, each list of plain values (a sample) on one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(report, 0) + "\n")


def _dumps(value: Any, depth: int) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, Mapping) and value:
        body = ",\n".join(f"{inner}{json.dumps(str(k))}: {_dumps(v, depth + 1)}" for k, v in value.items())
        return "{\n" + body + "\n" + pad + "}"
    if isinstance(value, list | tuple) and any(isinstance(v, Mapping | list | tuple) for v in value):
        body = ",\n".join(inner + _dumps(v, depth + 1) for v in value)
        return "[\n" + body + "\n" + pad + "]"
    return json.dumps(value)

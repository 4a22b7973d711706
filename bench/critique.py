"""Critique mode: items/s at 64 and at 256 critique tokens, and plain-score latency while
critiques run, against the real server process.

    .venv/bin/python bench/critique.py [--engine transformers|vllm] [--items 8] [--plain 16] [--tokens 64,256]

The critiques use a marker the default judge never writes, so every one generates its
whole ``max_tokens``. Plain-score latency: ``--plain`` one-item requests one after
another, first on an idle server, then while ``--items`` critiques of the largest
``--tokens`` run at once; the ratio it prints is loaded p50 over idle p50 (the target is
at most 2).

Every figure has a bootstrap 95% interval (``bench/figures.py``): critique items/s and
generated tokens/s over the items' shares of the wall time (every moment split among the
critiques in flight: run as one batch, they show only the spread within it), the p50s and
the largest loaded latency (``plain_loaded_max_ms``: of 16 requests there is no
meaningful p99) over requests, and the ratio over the plain items resampled once for both
(paired: the same items idle and loaded). Writes bench/results/critique-<engine>.json
(with every sample) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import charts, figures  # noqa: E402
from bench.overhead import load_items, start_server  # noqa: E402
from service.offline import intervals  # noqa: E402

MARKER = "[[NEVER]]"


def critique_body(item: dict, max_tokens: int, tag: str) -> dict:
    # A tag at the start of each prompt: no run is served from an earlier run's prefix cache.
    fresh = {**item, "instruction": f"[{tag}] {item['instruction'][:400]}", "response": item["response"][:400]}
    return {"items": [fresh], "critique": {"max_tokens": max_tokens, "marker": MARKER}}


async def critique_run(client: httpx.AsyncClient, items: list[dict], max_tokens: int, tag: str) -> dict:
    """All ``items`` as concurrent one-item critique requests."""

    async def one(item: dict) -> tuple[int, float, float]:
        sent = time.perf_counter() - started
        response = await client.post("/v1/score", json=critique_body(item, max_tokens, tag))
        response.raise_for_status()
        return int(response.json()["results"][0]["critique_tokens"]), sent, time.perf_counter() - started

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(item) for item in items))
    wall = time.perf_counter() - started
    generated, sent, done = ([answer[k] for answer in answers] for k in range(3))
    share = figures.shares(sent, done)
    rate, rate_ci = figures.rate(share)
    tokens, tokens_ci = figures.rate(share, generated)
    return {
        "max_tokens": max_tokens,
        "items": len(items),
        "items_per_s": rate,
        "items_per_s_ci": rate_ci,
        "generated_tokens_per_s": tokens,
        "generated_tokens_per_s_ci": tokens_ci,
        "wall_s": wall,
        "start_s": sent,
        "done_s": done,
        "generated_tokens": generated,
    }


async def plain_latencies(client: httpx.AsyncClient, items: list[dict], tag: str) -> list[float]:
    latencies = []
    for item in items:
        body = {"items": [{**item, "instruction": f"[{tag}] {item['instruction'][:400]}"}]}
        started = time.perf_counter()
        response = await client.post("/v1/score", json=body)
        response.raise_for_status()
        latencies.append(time.perf_counter() - started)
    return latencies


async def measure(url: str, items: list[dict], plain: list[dict], lengths: list[int]) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        await critique_run(client, items[:1], 8, "warm-up")
        runs = [await critique_run(client, items, n, f"critique {n}") for n in lengths]
        idle = await plain_latencies(client, plain, "idle")
        load = asyncio.ensure_future(critique_run(client, items, max(lengths), "load"))
        await asyncio.sleep(1.0)  # the critiques are generating
        loaded = await plain_latencies(client, plain, "loaded")
        still_running = not load.done()
        await load
    return {"critique": runs, **plain_figures(idle, loaded), "critiques_still_running_after_plain": still_running}


def plain_figures(idle: list[float], loaded: list[float]) -> dict:
    """p50 idle and loaded, the largest loaded latency and loaded p50 / idle p50, paired by item."""
    quiet, busy = 1000 * np.asarray(idle), 1000 * np.asarray(loaded)

    def on(idx: np.ndarray) -> dict[str, float]:
        idle_p50, loaded_p50 = float(np.median(quiet[idx])), float(np.median(busy[idx]))
        return {
            "plain_idle_p50_ms": idle_p50,
            "plain_loaded_p50_ms": loaded_p50,
            "plain_loaded_max_ms": float(busy[idx].max()),
            "ratio_loaded_over_idle": loaded_p50 / idle_p50,
        }

    samples = {"plain_idle_ms": quiet.tolist(), "plain_loaded_ms": busy.tolist()}
    return intervals.with_intervals(on, len(quiet)) | samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--plain", type=int, default=16)
    parser.add_argument("--tokens", default="64,256", help="critique lengths; the largest also loads the server")
    parser.add_argument("--port", type=int, default=8127)
    parser.add_argument("--out", type=Path, help="default: bench/results/critique-<engine>.json")
    args = parser.parse_args()
    lengths = [int(n) for n in args.tokens.split(",")]
    pool = load_items(args.items + args.plain)
    env = {"JUDGE_MAX_CRITIQUE_TOKENS": str(max(256, *lengths))}
    proc = start_server(args.port, args.engine, env)
    try:
        url = f"http://127.0.0.1:{args.port}"
        report = asyncio.run(measure(url, pool[: args.items], pool[args.items :], lengths))
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    report = {"engine": args.engine, **report}
    for run in report["critique"]:
        print(
            f"{args.engine}: {run['items']} critiques of {run['max_tokens']} tokens: "
            f"{intervals.fmt(run['items_per_s'], run['items_per_s_ci'])} items/s, "
            f"{intervals.fmt(run['generated_tokens_per_s'], run['generated_tokens_per_s_ci'], 1)} generated tokens/s"
        )
    print(
        f"plain p50 idle {intervals.fmt(report['plain_idle_p50_ms'], report['plain_idle_p50_ms_ci'], 0)} ms, "
        f"under critique load {intervals.fmt(report['plain_loaded_p50_ms'], report['plain_loaded_p50_ms_ci'], 0)} ms:"
        f" ratio {intervals.fmt(report['ratio_loaded_over_idle'], report['ratio_loaded_over_idle_ci'], 2)}"
        " (target <= 2)"
    )
    out = args.out or ROOT / "bench" / "results" / f"critique-{args.engine}.json"
    figures.write(out, report)
    charts.draw(out)


if __name__ == "__main__":
    main()

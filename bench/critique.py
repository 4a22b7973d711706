"""Critique mode: items/s at 64 and at 256 critique tokens, and plain-score latency while
critiques run, against the real server process.

    .venv/bin/python bench/critique.py [--engine transformers|vllm] [--items 8] [--plain 16]

The critiques use a marker the default judge never writes, so every one generates its
whole ``max_tokens``. Plain-score latency: ``--plain`` one-item requests one after
another, first on an idle server, then while ``--items`` 256-token critiques run at once;
the ratio it prints is loaded p50 over idle p50 (the target is at most 2).

Writes bench/results/critique-<engine>.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import charts  # noqa: E402
from bench.overhead import load_items, start_server  # noqa: E402

MARKER = "[[NEVER]]"


def critique_body(item: dict, max_tokens: int, tag: str) -> dict:
    # A tag at the start of each prompt: no run is served from an earlier run's prefix cache.
    fresh = {**item, "instruction": f"[{tag}] {item['instruction'][:400]}", "response": item["response"][:400]}
    return {"items": [fresh], "critique": {"max_tokens": max_tokens, "marker": MARKER}}


async def critique_run(client: httpx.AsyncClient, items: list[dict], max_tokens: int, tag: str) -> dict:
    """All ``items`` as concurrent one-item critique requests."""

    async def one(item: dict) -> int:
        response = await client.post("/v1/score", json=critique_body(item, max_tokens, tag))
        response.raise_for_status()
        return int(response.json()["results"][0]["critique_tokens"])

    started = time.perf_counter()
    generated = await asyncio.gather(*(one(item) for item in items))
    wall = time.perf_counter() - started
    return {
        "max_tokens": max_tokens,
        "items": len(items),
        "items_per_s": len(items) / wall,
        "generated_tokens_per_s": sum(generated) / wall,
        "wall_s": wall,
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


async def measure(url: str, items: list[dict], plain: list[dict]) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        await critique_run(client, items[:1], 8, "warm-up")
        runs = [await critique_run(client, items, n, f"critique {n}") for n in (64, 256)]
        idle = await plain_latencies(client, plain, "idle")
        load = asyncio.ensure_future(critique_run(client, items, 256, "load"))
        await asyncio.sleep(1.0)  # the critiques are generating
        loaded = await plain_latencies(client, plain, "loaded")
        still_running = not load.done()
        await load
    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded)
    return {
        "critique": runs,
        "plain_idle_p50_ms": 1000 * idle_p50,
        "plain_loaded_p50_ms": 1000 * loaded_p50,
        "plain_loaded_p99_ms": 1000 * max(loaded),
        "critiques_still_running_after_plain": still_running,
        "ratio_loaded_over_idle": loaded_p50 / idle_p50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--plain", type=int, default=16)
    parser.add_argument("--port", type=int, default=8127)
    args = parser.parse_args()
    pool = load_items(args.items + args.plain)
    env = {"JUDGE_MAX_CRITIQUE_TOKENS": "256"}
    proc = start_server(args.port, args.engine, env)
    try:
        report = asyncio.run(measure(f"http://127.0.0.1:{args.port}", pool[: args.items], pool[args.items :]))
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    report = {"engine": args.engine, **report}
    for run in report["critique"]:
        print(
            f"{args.engine}: {run['items']} critiques of {run['max_tokens']} tokens: "
            f"{run['items_per_s']:.3f} items/s, {run['generated_tokens_per_s']:.1f} generated tokens/s"
        )
    print(
        f"plain p50 idle {report['plain_idle_p50_ms']:.0f} ms, under critique load "
        f"{report['plain_loaded_p50_ms']:.0f} ms: ratio {report['ratio_loaded_over_idle']:.2f} (target <= 2)"
    )
    out = ROOT / "bench" / "results" / f"critique-{args.engine}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    charts.draw(out)


if __name__ == "__main__":
    main()

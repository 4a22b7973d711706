"""Scaling: throughput and p99 latency as concurrency grows (1 ... 64) against the real
server process, and the process's memory peak as batch tokens grow (in-process engine).

    .venv/bin/python bench/scaling.py [--engine transformers] [--requests 64]

Writes bench/results/scaling-<engine>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import DEFAULT_DATA, http_load, load_items, start_server  # noqa: E402
from service.config import Settings  # noqa: E402
from service.engines.base import ScoringTask  # noqa: E402
from service.judge import Judge  # noqa: E402
from service.metrics import Metrics  # noqa: E402


async def level(url: str, items: list[dict], concurrency: int) -> dict:
    return {"concurrency": concurrency, **await http_load(url, items, concurrency)}


async def memory_curve(engine: str, sizes: list[int]) -> list[dict]:
    judge = Judge(Settings(engine=engine), Metrics())
    await judge.load()
    assert judge.engine is not None
    rows = []
    try:
        for tokens in sizes:
            batch = max(1, tokens // 512)
            tasks = [
                ScoringTask(tuple((i * 31 + j) % 5000 + 100 for j in range(tokens // batch)), (33,))
                for i in range(batch)
            ]
            await judge.engine.score(tasks)
            rows.append(
                {"batch_tokens": tokens, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            )
    finally:
        await judge.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--levels", default="1,2,4,8,16,32,64")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    items = load_items(DEFAULT_DATA, args.requests)
    for item in items:  # short items keep a full sweep within minutes on a CPU
        item["instruction"] = item["instruction"][:400]
    server = start_server(args.port, args.engine)
    try:
        url = f"http://127.0.0.1:{args.port}"
        rows = []
        for concurrency in (int(x) for x in args.levels.split(",")):
            rows.append(asyncio.run(level(url, items, concurrency)))
            r = rows[-1]
            print(
                f"concurrency {concurrency:>3}: {r['items_per_s']:7.2f} items/s  p99 {r['p99_ms']:8.0f} ms", flush=True
            )
    finally:
        server.terminate()
        server.wait(timeout=60)
    memory = asyncio.run(memory_curve(args.engine, [512, 2048, 8192, 16384]))
    for row in memory:
        print(f"batch tokens {row['batch_tokens']:>6}: peak RSS {row['max_rss_mib']:8.0f} MiB")
    out = ROOT / "bench" / "results" / f"scaling-{args.engine}.json"
    out.write_text(json.dumps({"engine": args.engine, "concurrency": rows, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()

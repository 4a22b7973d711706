"""Batch jobs against one real server process: throughput beside the command-line client,
online latency while a batch runs, and the work redone after a SIGKILL.

    .venv/bin/python bench/batch_jobs.py [--items 256] [--repeats 5] [--background-items 2000]
        [--probes 200] [--recovery-items 512] [--chunk-items 64] [--quick]

Items are ``bench/overhead.py``'s (Topical-Chat turns, then PandaLM responses), one
``/v1/score`` item a line; a batch longer than that pool repeats items under new ids.

1. **Throughput.** The same ``--items`` items as one batch job (typed client: upload, create,
   poll every 0.1 s until ``completed``; timed from the upload to the poll that sees it end)
   and through ``judge-service score --url`` (the command's own code, its default
   concurrency, run in this process so interpreter start-up is not timed), with the engine
   otherwise idle; after one untimed round of each (kernels built for new batch shapes on
   first use), ``--repeats`` of each, interleaved (batch, command, batch, ...), each after
   a pause longer than the scheduler's window for recent online work (the command's requests
   are online work, and would shrink the next batch's first passes). The ratio
   is batch items/s over command items/s, mean(command wall) / mean(batch wall), with an
   interval over repeats. Target: at least 0.95.
2. **Online latency beside a batch.** ``--probes`` single-item requests, one at a time, on
   the idle server; then as many others while a ``--background-items`` batch runs (probes
   sent after it ends are not counted, and the report says how many ran beside it). The
   two probe sets alternate over the pool's last ``2 * --probes`` items, and the batch
   repeats the items before them: no probe meets its own prompt in the prefix cache (a
   prompt seen before runs mostly from cache, and would make the side that repeats faster).
   p50 and p99 (``max`` below 100) of each, and p50 beside / p50 idle with an interval (each
   sample resampled on its own). Target: at most 1.3.
3. **Recovery.** A ``--recovery-items`` batch on a fresh server (``--chunk-items`` lines a
   lease) is killed with SIGKILL once half its lines are answered. With the process dead,
   the store is read (SQLite, read-only): the lines answered before the kill are those
   whose answer was written (``state = 'done'``). The server restarts on the same data
   directory and finishes the job; its ``judge_batch_lane_prompts_total`` counts every
   prompt its engine passes scored, kept or not. Lines redone = scored after the restart -
   lines still pending at the kill (one prompt a line): a line answered before the kill and
   computed again shows up here, and lines that were running unrecorded at the kill do
   not (their answers were never kept). Target: at most one chunk. Also checked: output
   and error files hold every custom_id exactly once.

Writes bench/results/batch-jobs.json (``--out``) and its chart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client import JudgeClient  # noqa: E402

from bench import charts, figures  # noqa: E402
from bench.overhead import load_items  # noqa: E402
from service.cli.score_file import register, score_file  # noqa: E402
from service.offline import intervals  # noqa: E402
from service.scheduling.background import RECENT_ONLINE_S  # noqa: E402
from tests.conftest import metric_sum, process_server  # noqa: E402

POOL = 1572  # distinct items bench/overhead.py's data holds


def items_for(count: int, pool_size: int = POOL) -> list[dict[str, Any]]:
    """``count`` items with ids 0..count-1, repeating the pool's first ``pool_size``."""
    pool = load_items(min(count, pool_size))
    return [{**pool[k % len(pool)], "id": str(k)} for k in range(count)]


def batch_file(items: list[dict[str, Any]], path: Path) -> Path:
    lines = [{"custom_id": i["id"], "method": "POST", "url": "/v1/score", "body": {"items": [i]}} for i in items]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run_batch(judge: JudgeClient, source: Path) -> tuple[float, str]:
    """Seconds from upload to the poll that sees the batch completed; its id."""
    started = time.perf_counter()
    batch = judge.create_batch(judge.upload_batch_file(source).id)
    done = judge.wait_batch(batch.id, poll_s=0.1)
    assert done.status == "completed" and done.request_counts.failed == 0, done
    return time.perf_counter() - started, batch.id


def run_command(url: str, items: list[dict[str, Any]], folder: Path) -> float:
    """Seconds the ``judge-service score`` command takes for ``items``, from a fresh output."""
    source, output = folder / "items.jsonl", folder / "scored.jsonl"
    source.write_text("".join(json.dumps(item) + "\n" for item in items))
    output.unlink(missing_ok=True)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["score", str(source), "-o", str(output), "--url", url, "--no-progress"])
    started = time.perf_counter()
    summary = asyncio.run(score_file(args))
    seconds = time.perf_counter() - started
    assert summary["scored"] == len(items) and summary["failed"] == 0, summary
    return seconds


def settle() -> None:
    """Idle until the scheduler no longer counts the last run's requests as recent online
    work: the engine is otherwise idle for each side timed."""
    time.sleep(RECENT_ONLINE_S + 0.5)


def throughput(url: str, items: list[dict[str, Any]], repeats: int, folder: Path) -> dict[str, Any]:
    source = batch_file(items, folder / "batch.jsonl")
    batch_s, command_s = [], []
    with JudgeClient(url, timeout=600) as judge:
        # One untimed round of each first: a fresh process builds its kernels for each new
        # batch shape on first use, and the first side timed would pay for both.
        run_batch(judge, source)
        run_command(url, items, folder)
        for _ in range(repeats):
            settle()
            batch_s.append(run_batch(judge, source)[0])
            settle()
            command_s.append(run_command(url, items, folder))
    ratio, bounds = figures.ratio_of_means(command_s, batch_s)
    return {
        "items": len(items),
        "batch_items_per_s": len(items) / float(np.mean(batch_s)),
        "command_items_per_s": len(items) / float(np.mean(command_s)),
        "ratio_batch_over_command": ratio,
        "ratio_batch_over_command_ci": bounds,
        "batch_wall_s": batch_s,
        "command_wall_s": command_s,
    }


def probe(http: httpx.Client, items: list[dict[str, Any]], until: Any = None) -> list[float]:
    """Latencies of single-item requests sent one at a time, over ``items`` once, stopping
    early when ``until()`` says so (before a request is sent)."""
    latencies = []
    for item in items:
        if until is not None and until():
            break
        started = time.perf_counter()
        response = http.post("/v1/score", json={"items": [item]})
        response.raise_for_status()
        latencies.append(time.perf_counter() - started)
    return latencies


def median_ratio(top: list[float], bottom: list[float]) -> tuple[float, list[float]]:
    a, b = np.asarray(top), np.asarray(bottom)

    def ratio(i: np.ndarray, j: np.ndarray) -> float:
        return float(np.median(a[i]) / np.median(b[j]))

    bounds = intervals.bootstrap_independent(ratio, [len(a), len(b)])
    return ratio(np.arange(len(a)), np.arange(len(b))), list(bounds)


def latency_beside(url: str, count: int, background: int, folder: Path) -> dict[str, Any]:
    """``count`` probes idle and ``count`` others beside the batch: alternate items of the
    pool's last ``2 * count``, which the batch, repeating the items before them, never holds."""
    pool = items_for(POOL)
    idle_probes, probes = pool[-2 * count :: 2], pool[-2 * count + 1 :: 2]
    source = batch_file(items_for(background, POOL - 2 * count), folder / "background.jsonl")
    with httpx.Client(base_url=url, timeout=600) as http, JudgeClient(url, timeout=600) as judge:
        idle = probe(http, idle_probes)
        batch = judge.create_batch(judge.upload_batch_file(source).id)
        beside = probe(http, probes, until=lambda: judge.batch(batch.id).done)
        ended = judge.batch(batch.id).done
        done = judge.wait_batch(batch.id, poll_s=0.5)
    assert done.status == "completed", done
    ratio, bounds = median_ratio(beside, idle)
    return {
        "background_items": background,
        "probes": len(probes),
        "probes_beside_batch": len(beside),
        "batch_ended_during_probes": ended,
        "idle": figures.latency(idle),
        "beside_batch": figures.latency(beside),
        "p50_ratio": ratio,
        "p50_ratio_ci": bounds,
        "idle_latencies_ms": [1000 * x for x in idle],
        "beside_latencies_ms": [1000 * x for x in beside],
    }


def answered_in_store(data_dir: Path, batch_id: str) -> int:
    """Lines whose answer the store holds (read-only, with no server running)."""
    with sqlite3.connect(f"file:{data_dir / 'jobs.sqlite3'}?mode=ro", uri=True) as db:
        query = "SELECT COUNT(*) FROM job_items WHERE batch_id = ? AND state = 'done'"
        return int(db.execute(query, (batch_id,)).fetchone()[0])


def recovery(count: int, settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    source = batch_file(items_for(count), folder / "recovery.jsonl")
    with process_server(folder / "first.log", **settings) as (proc, url), JudgeClient(url) as judge:
        batch_id = judge.create_batch(judge.upload_batch_file(source).id).id
        while (seen := judge.batch(batch_id)).request_counts.completed < count // 2 and not seen.done:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    answered = answered_in_store(settings["data_dir"], batch_id)
    with process_server(folder / "second.log", **settings) as (_, url), JudgeClient(url) as judge:
        restarted = time.perf_counter()
        done = judge.wait_batch(batch_id, poll_s=0.2)
        finish_s = time.perf_counter() - restarted
        scored_after = metric_sum(url, "judge_batch_lane_prompts_total")
        ids = [json.loads(row)["custom_id"] for row in judge.file_content(done.output_file_id or "").splitlines()]
        if done.error_file_id:
            ids += [json.loads(row)["custom_id"] for row in judge.file_content(done.error_file_id).splitlines()]
    assert done.status == "completed", done
    return {
        "items": count,
        "chunk_items": settings["jobs_chunk_items"],
        "lease_s": settings["jobs_lease_s"],
        "answered_before_kill": answered,
        "scored_after_restart": int(scored_after),
        "redone": int(scored_after) - (count - answered),
        "each_custom_id_once": sorted(ids, key=int) == [str(k) for k in range(count)],
        "restart_to_completed_s": finish_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--background-items", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--recovery-items", type=int, default=512)
    parser.add_argument("--chunk-items", type=int, default=64, help="JUDGE_JOBS_CHUNK_ITEMS (the service's default)")
    parser.add_argument("--lease-s", type=float, default=60.0, help="JUDGE_JOBS_LEASE_S (the service's default)")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script runs end to end")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "batch-jobs.json")
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeats, args.background_items, args.probes = 16, 2, 200, 12
        args.recovery_items, args.chunk_items, args.lease_s = 48, 8, 3.0
    with tempfile.TemporaryDirectory(prefix="batch-jobs-") as tmp:
        folder = Path(tmp)
        settings = {"engine": "transformers", "jobs_chunk_items": args.chunk_items, "jobs_lease_s": args.lease_s}
        with process_server(folder / "server.log", data_dir=folder / "data", **settings) as (_, url):
            speed = throughput(url, items_for(args.items), args.repeats, folder)
            latency = latency_beside(url, args.probes, args.background_items, folder)
        recovered = recovery(args.recovery_items, {**settings, "data_dir": folder / "recovery-data"}, folder)
    report = {"quick": args.quick, "throughput": speed, "latency": latency, "recovery": recovered}
    figures.write(args.out, report)
    charts.draw(args.out)
    print(
        f"throughput, {speed['items']} items: batch {speed['batch_items_per_s']:.2f} items/s, command "
        f"{speed['command_items_per_s']:.2f} items/s; batch/command "
        f"{intervals.fmt(speed['ratio_batch_over_command'], speed['ratio_batch_over_command_ci'])} (target >= 0.95)"
    )
    idle, beside = latency["idle"], latency["beside_batch"]
    tail = figures.tail_key(beside)
    print(
        f"online latency, {latency['probes_beside_batch']}/{latency['probes']} probes beside a "
        f"{latency['background_items']}-item batch: p50 {idle['p50_ms']:.0f} -> {beside['p50_ms']:.0f} ms, "
        f"{tail.removesuffix('_ms')} {idle[figures.tail_key(idle)]:.0f} -> {beside[tail]:.0f} ms; p50 ratio "
        f"{intervals.fmt(latency['p50_ratio'], latency['p50_ratio_ci'])} (target <= 1.3)"
    )
    print(
        f"recovery: {recovered['answered_before_kill']}/{recovered['items']} answered before the kill, "
        f"{recovered['redone']} redone after the restart (target <= {recovered['chunk_items']}), "
        f"each custom_id once: {recovered['each_custom_id_once']}"
    )


if __name__ == "__main__":
    main()

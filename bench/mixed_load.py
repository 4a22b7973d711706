"""Mixed load: good clients and hostile clients against one real server process, as the CPU
pod runs it (its memory limit passed in), for a fixed time.

    .venv/bin/python bench/mixed_load.py [--seconds 60] [--clients 64] [--hostile-share 0.25]

Good clients send single-item score requests (Topical-Chat items) with a 10 s deadline, one
after another; a 429 is retried after its Retry-After, as the bundled client does. Hostile
clients cycle through the hostile-input corpus of ``tests/e2e/test_hostile.py`` (malformed bodies,
huge numbers, unknown fields) and the requests that once asked for gigabytes (32 labels of
many tokens each on a 300-token prompt; 32 short responses to one 1,700-token instruction),
with the same deadline. Reports: answers by status for each kind of client, 5xx and hangs
(no answer within the deadline plus 20 s), the good requests' latency percentiles with
bootstrap intervals, and the server's peak resident memory (the kernel's ``VmHWM`` of every
process of the server) against the pod's limit. Writes bench/results/mixed-load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import figures  # noqa: E402
from bench.overhead import load_items  # noqa: E402
from service.offline.intervals import fmt  # noqa: E402
from tests.conftest import process_server  # noqa: E402
from tests.e2e.test_hostile import CORPUS  # noqa: E402
from tests.e2e.test_memory_process import hostile_labels, peak_mb, pod_memory_limit_mb, words  # noqa: E402

DEADLINE_S = 10.0
# A request with no answer this long after its deadline counts as a hang.
HANG_AFTER_S = 20.0
MAX_RETRY_DELAY_S = 10.0


def memory_requests() -> list[tuple[str, dict]]:
    """The two requests that once asked for gigabytes, with the load's deadline."""
    context = words(1680, 2)
    return [
        (
            "32 labels of many tokens",
            {"items": [{"id": "a", "prompt": words(290, 1)}], "labels": hostile_labels(), "timeout_s": DEADLINE_S},
        ),
        (
            "32 items sharing 1,700 tokens",
            {
                "items": [{"id": str(i), "instruction": context, "response": f"answer {i}"} for i in range(32)],
                "timeout_s": DEADLINE_S,
            },
        ),
    ]


class Tally:
    def __init__(self) -> None:
        self.statuses: dict[str, Counter[str]] = {"good": Counter(), "hostile": Counter()}
        self.good_latencies: list[float] = []
        self.good_answered: list[float] = []
        self.hostile_wrong: Counter[str] = Counter()


async def send(http: httpx.AsyncClient, path: str, body: Any, kind: str, counts: Counter[str]) -> httpx.Response | None:
    """POST ``body`` (a JSON value, or bytes of content type ``kind``), counting its status,
    a hang or a connection error in ``counts``; None when there was no answer."""
    try:
        if kind == "json":
            response = await http.post(path, json=body)
        else:
            response = await http.post(path, content=body, headers={"Content-Type": kind})
    except httpx.TimeoutException:
        counts["hang"] += 1
        return None
    except httpx.TransportError:
        counts["connection error"] += 1
        return None
    counts[str(response.status_code)] += 1
    return response


async def good_client(http: httpx.AsyncClient, items: list[dict], stop: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        body = {"items": [rng.choice(items)], "timeout_s": DEADLINE_S}
        started = time.monotonic()
        response = await send(http, "/v1/score", body, "json", tally.statuses["good"])
        if response is None:
            continue
        latency = time.monotonic() - started
        tally.good_latencies.append(latency)
        if response.status_code == 200:
            tally.good_answered.append(latency)
        elif response.status_code in (429, 503):
            delay = float(response.headers.get("Retry-After", 1))
            await asyncio.sleep(min(delay, MAX_RETRY_DELAY_S, max(stop - time.monotonic(), 0)))


async def hostile_client(http: httpx.AsyncClient, stop: float, tally: Tally, offset: int) -> None:
    corpus = [(name, path, body, kind, {status}) for name, path, body, kind, status, _ in CORPUS]
    # The memory requests may be answered (200), refused as too costly for the deadline (429)
    # or run into it (504); never a 5xx otherwise, never a hang.
    corpus += [(name, "/v1/score", body, "json", {200, 422, 429, 504}) for name, body in memory_requests()]
    n = offset
    while time.monotonic() < stop:
        name, path, body, kind, allowed = corpus[n % len(corpus)]
        n += 1
        response = await send(http, path, body, kind, tally.statuses["hostile"])
        if response is not None and response.status_code not in allowed:
            tally.hostile_wrong[f"{name}: {response.status_code}"] += 1


async def load(url: str, items: list[dict], seconds: float, clients: int, hostile: int) -> Tally:
    tally = Tally()
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE_S + HANG_AFTER_S, limits=limits) as http:
        tasks = [hostile_client(http, stop, tally, n * 7) for n in range(hostile)]
        tasks += [good_client(http, items, stop, tally, n) for n in range(clients - hostile)]
        await asyncio.gather(*tasks)
    return tally


def latencies(row: dict | None) -> str:
    if row is None:
        return "none"
    tail = figures.tail_key(row)
    return (
        f"{row['requests']} requests, p50 {fmt(row['p50_ms'], row['p50_ms_ci'], 0)} ms, "
        f"{tail.removesuffix('_ms')} {fmt(row[tail], row[tail + '_ci'], 0)} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--hostile-share", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mixed-load.json")
    args = parser.parse_args()
    limit = pod_memory_limit_mb()
    hostile = round(args.clients * args.hostile_share)
    items = load_items(256)
    log = args.out.with_suffix(".server.log")
    with process_server(log, memory_limit_mb=limit, max_items=64) as (proc, url):
        started = time.monotonic()
        tally = asyncio.run(load(url, items, args.seconds, args.clients, hostile))
        wall = time.monotonic() - started
        up = httpx.get(f"{url}/health", timeout=30).status_code
        peak = peak_mb(proc.pid)
    log.unlink(missing_ok=True)
    five = {
        kind: sum(n for status, n in counts.items() if status.startswith("5"))
        for kind, counts in tally.statuses.items()
    }
    report = {
        "seconds": round(wall, 1),
        "clients": args.clients,
        "hostile_clients": hostile,
        "deadline_s": DEADLINE_S,
        "statuses": {kind: dict(sorted(counts.items())) for kind, counts in tally.statuses.items()},
        "5xx": five,
        "hangs": {kind: counts["hang"] for kind, counts in tally.statuses.items()},
        "hostile_wrong_status": dict(tally.hostile_wrong),
        "good_all": figures.latency(tally.good_latencies) if tally.good_latencies else None,
        "good_answered": figures.latency(tally.good_answered) if tally.good_answered else None,
        "good_answered_per_s": round(len(tally.good_answered) / wall, 2),
        "health_after": up,
        "peak_rss_mib": round(peak),
        "pod_limit_mib": limit,
    }
    figures.write(args.out, report)
    print(f"{wall:.0f} s, {args.clients} clients ({hostile} hostile), deadline {DEADLINE_S:g} s")
    for kind, counts in report["statuses"].items():
        print(f"  {kind}: {counts}")
    print(f"  5xx {five}, hangs {report['hangs']}, wrong hostile statuses {report['hostile_wrong_status']}")
    print(f"  good requests, all answers: {latencies(report['good_all'])}")
    print(f"  good requests, 200s: {latencies(report['good_answered'])}, {report['good_answered_per_s']}/s")
    print(f"  /health after: {up}; peak RSS {peak:.0f} MiB of the pod's {limit} MiB")


if __name__ == "__main__":
    main()

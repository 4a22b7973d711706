"""Against the peer a user would reach for: vLLM's own OpenAI-compatible server
(`vllm serve`, same model, same prompts) with /v1/completions, max_tokens=1, logprobs=20,
versus this service on the vLLM engine. Same engine underneath, same concurrency, the
model's threads on the same cores (no core kept for the scheduler, as the service sets it).

    .venv/bin/python bench/peer.py [--items 256] [--concurrency 16]

Ours runs three times, each on a fresh server: as served by default
(JUDGE_VLLM_LAYERS=true: the per-layer capture installed, the model compiled, only engine
steps that hold a layered request run eagerly), the same with every request asking for
``method: "lager"`` (every step then runs eagerly and captures), and without the capture
(JUDGE_VLLM_LAYERS=false). Reports the throughput ratios (ours / theirs, and the
default's and LAGER's over the capture-free engine), how often the peer's top-20 misses
at least one label, and the expected-score error of its top-20 estimate against our
exact distribution.

Every figure has a 95% interval: items/s over the items' shares of the wall time (every
moment split among the requests in flight, ``bench/figures.py``), each ratio over the
items resampled once for both servers (paired: the same items through both), the error's
mean and maximum over items (bootstrap), and the share of items whose top-20 missed a
label the bootstrap's or, when it missed on all items or none, the exact Clopper-Pearson
one (a bootstrap of 256 out of 256 would be [1, 1]). Writes bench/results/peer.json (with
when every item was sent and answered, and its error) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import charts, figures  # noqa: E402
from bench.overhead import load_items, start_server, wait_until_up  # noqa: E402
from service.config import Settings  # noqa: E402
from service.engines.model_store import resolve_model  # noqa: E402
from service.offline import intervals  # noqa: E402
from service.requests.prompts import DEFAULT_RUBRIC, Prompts  # noqa: E402

LABELS = ["1", "2", "3", "4", "5"]
# Our three setups: (name, JUDGE_VLLM_LAYERS, the requests' method).
OURS = [("ours", "true", "final"), ("ours_lager", "true", "lager"), ("ours_no_capture", "false", "final")]


async def run_load(send, payloads: list, concurrency: int) -> tuple[list, dict[str, list[float]]]:
    """Every payload through ``send`` from ``concurrency`` clients: the answers, and when each
    was sent and answered (seconds from the start), in payload order."""
    results: list = [None] * len(payloads)
    times = {"start_s": [0.0] * len(payloads), "done_s": [0.0] * len(payloads)}
    queue = list(enumerate(payloads))

    async def worker() -> None:
        while queue:
            index, payload = queue.pop()
            times["start_s"][index] = time.perf_counter() - started
            results[index] = await send(payload)
            times["done_s"][index] = time.perf_counter() - started

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, times


def start_peer(model_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")}
    # The model's threads on the same cores as ours (JUDGE_CPU_RESERVED_CORES): vLLM's own
    # default keeps a core out of them, half of a 2-core machine.
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(Settings().cpu_reserved_cores))
    # The OpenAI-compatible server that `vllm serve` runs; vllm-cpu's `vllm` script looks up
    # the distribution name "vllm" for --version and fails before serving.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    command += ["--port", str(port)]
    command += ["--dtype", "float32", "--max-logprobs", "20", "--enable-prefix-caching", "--served-model-name", "judge"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_until_up(proc, f"http://127.0.0.1:{port}/health", 900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer.json")
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

    def ours_send(method: str):
        async def send(item: dict) -> dict:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=3600) as client:
                response = await client.post("/v1/score", json={"items": [item], "method": method})
                response.raise_for_status()
                return response.json()["results"][0]

        return send

    done, answers = {}, {}
    for name, layers, method in OURS:
        ours_proc = start_server(args.port, "vllm", {"JUDGE_VLLM_LAYERS": layers})
        try:
            answers[name], done[name] = asyncio.run(run_load(ours_send(method), items, args.concurrency))
        finally:
            ours_proc.terminate()
            ours_proc.wait(timeout=120)
    ours = answers["ours"]

    peer_proc = start_peer(model_dir, args.port)
    try:

        async def peer_send(ids: list[int]) -> dict:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=3600) as client:
                body = {"model": "judge", "prompt": ids, "max_tokens": 1, "logprobs": 20, "temperature": 0}
                response = await client.post("/v1/completions", json=body)
                response.raise_for_status()
                return response.json()["choices"][0]["logprobs"]["top_logprobs"][0]

        peer, done["peer"] = asyncio.run(run_load(peer_send, token_ids, args.concurrency))
    finally:
        peer_proc.terminate()
        peer_proc.wait(timeout=120)

    report = {"items": len(items), "concurrency": args.concurrency}
    report |= throughput(done) | top20_figures(ours, peer)
    figures.write(args.out, report | {"times": done})
    charts.draw(args.out)
    for key, value in report.items():
        if not key.endswith("_ci") and not isinstance(value, list):
            bounds = report.get(f"{key}_ci")
            print(f"{key}: {intervals.fmt(value, bounds)}" if isinstance(value, float) else f"{key}: {value}")


def throughput(runs: dict[str, dict[str, list[float]]]) -> dict:
    """items/s of every server and ours / the peer's, paired by item, from when each item
    was sent and answered in each run."""
    shares = {
        name: dict(enumerate(figures.shares(times["start_s"], times["done_s"]).tolist()))
        for name, times in runs.items()
    }
    out: dict = {}
    for name, share in shares.items():
        out[f"{name}_items_per_s"], out[f"{name}_items_per_s_ci"] = figures.rate(list(share.values()))
    for name in ("ours", "ours_lager", "ours_no_capture"):
        key = f"throughput_ratio_{name}_over_peer"
        out[key], out[f"{key}_ci"] = figures.rate_ratio(shares[name], shares["peer"])
    for name in ("ours", "ours_lager"):
        key = f"throughput_ratio_{name}_over_ours_no_capture"
        out[key], out[f"{key}_ci"] = figures.rate_ratio(shares[name], shares["ours_no_capture"])
    return out


def top20_figures(ours: list[dict], peer: list[dict]) -> dict:
    """How often the peer's top-20 misses a label (exact interval) and the error of its
    expected score against ours (bootstrap intervals of the mean and the maximum)."""
    missing, errors = [], []
    for exact, top in zip(ours, peer, strict=True):
        present = {label: math.exp(top[label]) for label in LABELS if label in top}
        missing.append(len(LABELS) - len(present))
        if present:
            mass = sum(present.values())
            estimate = sum(float(label) * p / mass for label, p in present.items())
            errors.append(abs(estimate - exact["expected_score"]))
    missed = [count > 0 for count in missing]
    out: dict = {
        "peer_top20_missing_a_label": sum(missed) / len(missed),
        "peer_top20_missing_a_label_ci": list(intervals.rate_interval(missed)),
        "peer_top20_missing_labels": missing,
    }
    if errors:
        array = np.asarray(errors)
        out["peer_expected_score_mae"], out["peer_expected_score_mae_ci"] = figures.mean(errors)
        out["peer_expected_score_max_error"] = float(array.max())
        bounds = intervals.bootstrap(lambda idx: float(array[idx].max()), len(array))
        out["peer_expected_score_max_error_ci"] = list(bounds)
    return out | {"peer_expected_score_errors": errors}


if __name__ == "__main__":
    main()

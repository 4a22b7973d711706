"""Closeness to the machine's limit: achieved model FLOP/s of the transformers engine at
full batch, over a dense fp32 matmul's FLOP/s measured on the same machine in the same run.

    .venv/bin/python bench/roofline.py [--batch 16] [--tokens 512]

Model FLOPs per batch: 2 x (non-embedding parameters) x tokens, plus causal attention
(2 x 2 x layers x hidden x T^2 / 2 per sequence), plus the LM head on the scoring
position (2 x hidden x vocab per item). Writes bench/results/roofline.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import charts  # noqa: E402
from service.cli.judge import open_runtime  # noqa: E402
from service.config import Settings  # noqa: E402
from service.engines.base import ScoringTask  # noqa: E402


def matmul_flops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times)


def model_flops(config, batch: int, tokens: int, params: int, embedding: int) -> float:
    dense = 2 * (params - embedding) * tokens * batch
    attention = batch * 2 * 2 * config.num_hidden_layers * config.hidden_size * tokens * tokens / 2
    head = batch * 2 * config.hidden_size * config.vocab_size
    return dense + attention + head


async def engine_seconds(batch: int, tokens: int, repeats: int) -> tuple[float, object, int, int]:
    async with open_runtime(Settings(engine="transformers")) as runtime:
        return await _engine_seconds(runtime.engine, batch, tokens, repeats)


async def _engine_seconds(engine, batch: int, tokens: int, repeats: int) -> tuple[float, object, int, int]:
    model = engine.model  # type: ignore[attr-defined]
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    tasks = [
        ScoringTask(token_ids=tuple((7 * i + j) % 1000 + 100 for j in range(tokens)), label_ids=(33,))
        for i in range(batch)
    ]
    await engine.score(tasks)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await engine.score(tasks)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), model.config, params, embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "roofline.json")
    args = parser.parse_args()
    peak_before = matmul_flops()
    seconds, config, params, embedding = asyncio.run(engine_seconds(args.batch, args.tokens, args.repeats))
    peak_after = matmul_flops()
    peak = max(peak_before, peak_after)
    flops = model_flops(config, args.batch, args.tokens, params, embedding)
    achieved = flops / seconds
    report = {
        "batch": args.batch,
        "tokens_per_item": args.tokens,
        "threads": torch.get_num_threads(),
        "seconds_per_batch": seconds,
        "model_gflop_per_batch": flops / 1e9,
        "achieved_gflops": achieved / 1e9,
        "matmul_gflops": peak / 1e9,
        "ratio": achieved / peak,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    charts.draw(args.out)
    for key, value in report.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"achieved / matmul FLOP/s: {achieved / peak:.2f} (target 0.6)")


if __name__ == "__main__":
    main()

"""Closeness to the machine's limit: achieved model FLOP/s of the transformers engine at
full batch, over a dense fp32 matmul's FLOP/s measured on the same machine in the same run.

    .venv/bin/python bench/roofline.py [--batch 16] [--tokens 512] [--repeats 5]

Model FLOPs per batch: 2 x (non-embedding parameters) x tokens, plus causal attention
(2 x 2 x layers x hidden x T^2 / 2 per sequence), plus the LM head on the scoring
position (2 x hidden x vocab per item). The batch is timed ``--repeats`` times after one
untimed run, the matmul 10 times before the model runs and 10 times after; each FLOP/s
figure is the FLOPs over the mean time, with a bootstrap 95% interval over the timed
runs, and the ratio's interval resamples the two sets of runs each on its own. Writes
bench/results/roofline.json (with every timing) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import charts, figures  # noqa: E402
from service.cli.judge import open_runtime  # noqa: E402
from service.config import Settings  # noqa: E402
from service.core.tasks import ScoringTask  # noqa: E402
from service.offline.intervals import fmt  # noqa: E402

MATMUL_SIZE = 2048


def matmul_seconds(size: int = MATMUL_SIZE, repeats: int = 10) -> list[float]:
    """Seconds of each of ``repeats`` dense fp32 ``size`` x ``size`` matmuls, after one untimed."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return times


def model_flops(config, batch: int, tokens: int, params: int, embedding: int) -> float:
    dense = 2 * (params - embedding) * tokens * batch
    attention = batch * 2 * 2 * config.num_hidden_layers * config.hidden_size * tokens * tokens / 2
    head = batch * 2 * config.hidden_size * config.vocab_size
    return dense + attention + head


async def engine_seconds(batch: int, tokens: int, repeats: int) -> tuple[list[float], object, int, int]:
    # No prefix cache: every timed batch repeats the same prompts, and must compute them.
    async with open_runtime(Settings(engine="transformers", prefix_cache_mb=0)) as runtime:
        return await _engine_seconds(runtime.engine, batch, tokens, repeats)


async def _engine_seconds(engine, batch: int, tokens: int, repeats: int) -> tuple[list[float], object, int, int]:
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
    return times, model.config, params, embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the batch")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "roofline.json")
    args = parser.parse_args()
    before = matmul_seconds()
    seconds, config, params, embedding = asyncio.run(engine_seconds(args.batch, args.tokens, args.repeats))
    matmul = before + matmul_seconds()
    flops = model_flops(config, args.batch, args.tokens, params, embedding)
    batch_s, batch_ci = figures.mean(seconds)
    matmul_s, matmul_ci = figures.mean(matmul)
    gflop_matmul = 2 * MATMUL_SIZE**3 / 1e9
    # achieved / matmul = (model FLOPs / mean batch time) / (matmul FLOPs / mean matmul time).
    ratio, ratio_ci = figures.ratio_of_means(matmul, seconds)
    scale = flops / 1e9 / gflop_matmul
    report = {
        "batch": args.batch,
        "tokens_per_item": args.tokens,
        "threads": torch.get_num_threads(),
        "seconds_per_batch": batch_s,
        "seconds_per_batch_ci": batch_ci,
        "model_gflop_per_batch": flops / 1e9,
        # FLOP/s falls as time rises: the bounds of the mean time are the rate's, swapped.
        "achieved_gflops": flops / 1e9 / batch_s,
        "achieved_gflops_ci": [flops / 1e9 / batch_ci[1], flops / 1e9 / batch_ci[0]],
        "matmul_gflops": gflop_matmul / matmul_s,
        "matmul_gflops_ci": [gflop_matmul / matmul_ci[1], gflop_matmul / matmul_ci[0]],
        "ratio": ratio * scale,
        "ratio_ci": [bound * scale for bound in ratio_ci],
        "batch_seconds": seconds,
        "matmul_seconds": matmul,
    }
    figures.write(args.out, report)
    charts.draw(args.out)
    for key, value in report.items():
        if not key.endswith("_ci") and not isinstance(value, list):
            bounds = report.get(f"{key}_ci")
            print(f"{key}: {fmt(value, bounds)}" if isinstance(value, float) else f"{key}: {value}")
    print(f"achieved / matmul FLOP/s: {fmt(report['ratio'], report['ratio_ci'], 2)} (target 0.6)")


if __name__ == "__main__":
    main()

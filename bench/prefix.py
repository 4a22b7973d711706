"""Shared prefixes: N responses to one instruction under one long rubric (N = 1, 4, 16, 64),
per-item cost with prefix reuse on and off, in one run.

    .venv/bin/python bench/prefix.py [--engine transformers|vllm] [--sizes 1,4,16,64]

The rubric and instruction (the shared prefix) are about 10x the length of a response.
Transformers: the shared prefix runs once per batch and its KV cache is repeated. vLLM:
automatic prefix caching, switched on and off by starting the engine twice; every timed
request gets a rubric of its own, so nothing is reused from an earlier measurement.
Prints seconds per item for each N and setting, the ratio of per-item cost at N=16 to N=1
with reuse on (target <= 1/3), and writes bench/results/prefix-<engine>.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client.protocol import StructuredScoreRequest  # noqa: E402

from bench import charts  # noqa: E402
from service.cli.judge import open_runtime  # noqa: E402
from service.config import Settings  # noqa: E402
from service.serving import ScoreService  # noqa: E402

WORDS = "the answer is clear correct helpful complete concise relevant accurate kind polite".split()


def request(n: int, rng: random.Random) -> StructuredScoreRequest:
    criteria = "Judge the response carefully. " + " ".join(rng.choice(WORDS) for _ in range(300))
    instruction = "Explain why the sky is blue to a ten-year-old."
    items = [
        {"id": str(i), "instruction": instruction, "response": " ".join(rng.choice(WORDS) for _ in range(40))}
        for i in range(n)
    ]
    descriptions = {str(k): f"Score {k} of 5." for k in range(1, 6)}
    return StructuredScoreRequest.model_validate(
        {"items": items, "rubric": {"criteria": criteria, "score_descriptions": descriptions}}
    )


async def measure(engine_kind: str, reuse: bool, sizes: list[int], repeats: int) -> list[dict]:
    settings = Settings(
        engine=engine_kind,
        prefix_reuse=reuse,
        max_items=max(sizes),
        max_batch_size=max(sizes),
        max_batch_tokens=10**6,
        cpu_kvcache_space_gb=2,
    )
    rng = random.Random(0)
    rows = []
    async with open_runtime(settings) as runtime:
        engine, service = runtime.engine, ScoreService(runtime)
        for n in sizes:
            # A fresh rubric for every call: vLLM's cache must not carry over between calls.
            batches = [service.tasks(request(n, rng)) for _ in range(repeats + 1)]
            await engine.score(batches[0])
            best = float("inf")
            for tasks in batches[1:]:
                t0 = time.perf_counter()
                await engine.score(tasks)
                best = min(best, time.perf_counter() - t0)
            tokens = batches[0][0].length
            rows.append({"n": n, "prefix_reuse": reuse, "prompt_tokens": tokens, "seconds_per_item": best / n})
            print(f"N={n:<3} reuse={'on ' if reuse else 'off'} {1000 * best / n:8.1f} ms/item", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default: bench/results/prefix-<engine>.json")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / f"prefix-{args.engine}.json"
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = [row for reuse in (True, False) for row in asyncio.run(measure(args.engine, reuse, sizes, args.repeats))]
    cost = {(r["n"], r["prefix_reuse"]): r["seconds_per_item"] for r in rows}
    ratio = cost[(16, True)] / cost[(1, True)] if (16, True) in cost and (1, True) in cost else None
    if ratio is not None:
        print(f"per-item cost N=16 / N=1 with reuse: {ratio:.3f} (target <= 0.333)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"engine": args.engine, "rows": rows, "ratio_16_over_1": ratio}, indent=2))
    charts.draw(args.out)


if __name__ == "__main__":
    main()

"""Shared prefixes: N responses to one instruction under one long rubric (N = 1, 4, 16, 64),
per-item cost with prefix reuse on and off, in one run.

    .venv/bin/python bench/prefix.py [--engine transformers|vllm] [--sizes 1,4,16,64] [--repeats 5]

The rubric and instruction (the shared prefix) are about 10x the length of a response.
Transformers: the shared prefix runs once per batch and its KV cache is repeated. vLLM:
automatic prefix caching, switched on and off by starting the engine twice; every timed
request gets a rubric of its own, so nothing is reused from an earlier measurement.
Each N is timed ``--repeats`` times after one untimed call; the per-item cost is the mean
over those calls, with a bootstrap 95% interval over them. Prints seconds per item for
each N and setting, the ratio of per-item cost at N=16 to N=1 with reuse on (target <=
1/4) with its interval (the two Ns are different calls: each is resampled on its own),
and writes bench/results/prefix-<engine>.json (with every call's seconds) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client.protocol import StructuredScoreRequest  # noqa: E402

from bench import charts, figures  # noqa: E402
from service.cli.judge import open_runtime  # noqa: E402
from service.config import Settings  # noqa: E402
from service.offline import intervals  # noqa: E402
from service.requests.score import prepare_score  # noqa: E402

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
        engine = runtime.engine
        prompts, limits = runtime.require_ready()
        for n in sizes:
            # A fresh rubric for every call: vLLM's cache must not carry over between calls.
            batches = [
                prepare_score(request(n, rng), prompts, limits, runtime.model_name).tasks for _ in range(repeats + 1)
            ]
            await engine.score(batches[0])
            per_item = []
            for tasks in batches[1:]:
                t0 = time.perf_counter()
                await engine.score(tasks)
                per_item.append((time.perf_counter() - t0) / n)
            cost, bounds = figures.mean(per_item)
            row = {"n": n, "prefix_reuse": reuse, "prompt_tokens": batches[0][0].length}
            rows.append(row | {"seconds_per_item": cost, "seconds_per_item_ci": bounds, "repeats": per_item})
            ms = intervals.fmt(1000 * cost, [1000 * b for b in bounds], 1)
            print(f"N={n:<3} reuse={'on ' if reuse else 'off'} {ms} ms/item", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per N (after one untimed)")
    parser.add_argument("--out", type=Path, help="default: bench/results/prefix-<engine>.json")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / f"prefix-{args.engine}.json"
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = [row for reuse in (True, False) for row in asyncio.run(measure(args.engine, reuse, sizes, args.repeats))]
    calls = {(r["n"], r["prefix_reuse"]): r["repeats"] for r in rows}
    report: dict = {"engine": args.engine, "repeats": args.repeats, "ratio_16_over_1": None}
    if (16, True) in calls and (1, True) in calls:
        ratio, bounds = figures.ratio_of_means(calls[(16, True)], calls[(1, True)])
        report |= {"ratio_16_over_1": ratio, "ratio_16_over_1_ci": bounds}
        print(f"per-item cost N=16 / N=1 with reuse: {intervals.fmt(ratio, bounds)} (target <= 0.25)")
    figures.write(args.out, report | {"rows": rows})
    charts.draw(args.out)


if __name__ == "__main__":
    main()

"""The cost of a 1-10 scale against 1-5 on the default model: the same prompts, scored with
labels "1".."5" (one token each) and "1".."10" ("10" is two tokens, so every item also
reads the node after "1"), alternating in one run.

    .venv/bin/python bench/labels.py [--engine transformers|vllm] [--items 48] [--rounds 3]

Prompts are Topical-Chat items rendered with the built-in rubric and sent as raw prompts,
so only the label set differs. Prints items/s for each scale and the ratio 1-10 / 1-5,
and writes bench/results/labels-<engine>.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client.protocol import score_request  # noqa: E402

from bench import charts  # noqa: E402
from bench.overhead import load_items  # noqa: E402
from service.cli.judge import in_process_settings, open_runtime  # noqa: E402
from service.prompts import DEFAULT_RUBRIC  # noqa: E402
from service.serving import ScoreService  # noqa: E402

SCALES = {"1-5": [str(n) for n in range(1, 6)], "1-10": [str(n) for n in range(1, 11)]}


async def measure(engine: str, count: int, rounds: int, chunk: int) -> dict:
    items = load_items(count)
    settings = in_process_settings(engine=engine, max_items=chunk)
    async with open_runtime(settings) as runtime:
        service = ScoreService(runtime)
        assert runtime.prompts is not None
        prompts = [runtime.prompts.score(i["instruction"], i["response"], None, DEFAULT_RUBRIC) for i in items]
        raw = [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)]
        seconds: dict[str, list[float]] = {name: [] for name in SCALES}
        for _ in range(rounds):
            for name, labels in SCALES.items():
                started = time.perf_counter()
                for start in range(0, len(raw), chunk):
                    request = score_request({"items": raw[start : start + chunk], "labels": labels})
                    await service.score(request, 3600, None)
                seconds[name].append(time.perf_counter() - started)
    rates = {name: count / statistics.median(times) for name, times in seconds.items()}
    return {
        "engine": engine,
        "items": count,
        "rounds": rounds,
        "items_per_s": rates,
        "seconds": seconds,
        "ratio_10_over_5": rates["1-10"] / rates["1-5"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16, help="items per request")
    args = parser.parse_args()
    report = asyncio.run(measure(args.engine, args.items, args.rounds, args.chunk))
    out = charts.RESULTS / f"labels-{args.engine}.json"
    out.write_text(json.dumps(report, indent=2))
    charts.draw(out)
    rates = report["items_per_s"]
    print(f"{args.engine}: 1-5 {rates['1-5']:.2f} items/s, 1-10 {rates['1-10']:.2f} items/s")
    print(f"ratio 1-10 / 1-5 = {report['ratio_10_over_5']:.3f}")


if __name__ == "__main__":
    main()

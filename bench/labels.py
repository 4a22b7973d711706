"""The cost of a 1-10 scale against 1-5 on the default model: the same prompts, scored with
labels "1".."5" (one token each) and "1".."10" ("10" is two tokens, so every item also
reads the node after "1"), alternating in one run.

    .venv/bin/python bench/labels.py [--engine transformers|vllm] [--items 48] [--rounds 5]

Prompts are Topical-Chat items rendered with the built-in rubric and sent as raw prompts,
``--chunk`` items per request, so only the label set differs. After one untimed round,
each round sends every request under 1-5, then under 1-10. items/s is every item of every
timed round over their total seconds (the mean round), with a bootstrap 95% interval over
requests; the ratio 1-10 / 1-5 resamples requests paired: the same (round, request) under
both scales. Prints items/s for each scale and the ratio, and writes
bench/results/labels-<engine>.json (with every request's seconds) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client.protocol import score_request  # noqa: E402

from bench import charts, figures  # noqa: E402
from bench.overhead import load_items  # noqa: E402
from service.cli.judge import in_process_settings, open_runtime  # noqa: E402
from service.offline import intervals  # noqa: E402
from service.requests.prompts import DEFAULT_RUBRIC  # noqa: E402
from service.serving import ScoreService  # noqa: E402

SCALES = {"1-5": [str(n) for n in range(1, 6)], "1-10": [str(n) for n in range(1, 11)]}


async def measure(engine: str, count: int, rounds: int, chunk: int) -> dict:
    items = load_items(count)
    # Every round repeats the same prompts: the transformers prefix cache would serve them
    # whole from the second round on, and the bench would time label reads on cached prompts.
    settings = in_process_settings(engine=engine, max_items=chunk, prefix_cache_mb=0)
    async with open_runtime(settings) as runtime:
        service = ScoreService(runtime, runtime.online)
        assert runtime.prompts is not None
        prompts = [runtime.prompts.score(i["instruction"], i["response"], None, DEFAULT_RUBRIC) for i in items]
        raw = [{"id": str(i), "prompt": p} for i, p in enumerate(prompts)]
        # seconds[scale][round][request]; round 0 is not timed: it pays for first calls (and,
        # on vLLM, fills its prefix cache, which every later round finds in the same state).
        seconds: dict[str, list[list[float]]] = {name: [] for name in SCALES}
        for _ in range(rounds + 1):
            for name, labels in SCALES.items():
                seconds[name].append([])
                for start in range(0, len(raw), chunk):
                    request = score_request({"items": raw[start : start + chunk], "labels": labels})
                    started = time.perf_counter()
                    await service.serve(request, 3600, None)
                    seconds[name][-1].append(time.perf_counter() - started)
    seconds = {name: times[1:] for name, times in seconds.items()}
    sizes = [len(raw[start : start + chunk]) for start in range(0, len(raw), chunk)] * rounds
    rates, bounds = {}, {}
    for name, times in seconds.items():
        # A request's items over its seconds: its items' share of the run.
        flat = [t for per_round in times for t in per_round]
        rates[name], bounds[name] = figures.rate(flat, sizes)
    five, ten = (np.array([t for r in seconds[name] for t in r]) for name in ("1-5", "1-10"))

    def ratio(idx: np.ndarray) -> float:
        return float(five[idx].sum() / ten[idx].sum())

    return {
        "engine": engine,
        "items": count,
        "rounds": rounds,
        "items_per_request": chunk,
        "items_per_s": rates,
        "items_per_s_ci": bounds,
        "ratio_10_over_5": ratio(np.arange(len(five))),
        "ratio_10_over_5_ci": list(intervals.bootstrap(ratio, len(five))),
        "seconds": {name: [sum(r) for r in times] for name, times in seconds.items()},
        "request_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=16, help="items per request")
    parser.add_argument("--out", type=Path, help="default: bench/results/labels-<engine>.json")
    args = parser.parse_args()
    report = asyncio.run(measure(args.engine, args.items, args.rounds, args.chunk))
    out = args.out or charts.RESULTS / f"labels-{args.engine}.json"
    figures.write(out, report)
    charts.draw(out)
    rates, bounds = report["items_per_s"], report["items_per_s_ci"]
    print(
        f"{args.engine}: 1-5 {intervals.fmt(rates['1-5'], bounds['1-5'], 2)} items/s, "
        f"1-10 {intervals.fmt(rates['1-10'], bounds['1-10'], 2)} items/s"
    )
    print(f"ratio 1-10 / 1-5 = {intervals.fmt(report['ratio_10_over_5'], report['ratio_10_over_5_ci'])}")


if __name__ == "__main__":
    main()

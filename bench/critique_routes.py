"""Critique mode on vLLM: two ways to read the labels after a generated critique, side by side.

    .venv/bin/python bench/critique_routes.py [--items 8] [--rounds 5] [--max-tokens 64] [--marker .]

- **stop-and-read** (what the engine serves): one request generates with the marker as a
  stop string; a second request reads the labels after the prompt and the kept tokens,
  its prompt served by the prefix cache but for the last, partly filled block.
- **one request**: one request generates with ``logprob_token_ids`` set to the labels and
  streams every step; the step after the token that completes the marker carries the
  label log-probabilities at the read position, and the request is then aborted. Where
  the marker never comes, or a label has more than one token, or labels are read with a
  prefix after the marker, it must fall back to a second request anyway.

Both run the same items (Topical-Chat turns, instruction and response cut to 400
characters, a marker the default judge writes early, so the read is a large share of the
work) as concurrent one-item requests, the routes alternating in rounds, each round on
fresh prompts (a tag at the start) so nothing is served from an earlier round's cache.
Every one-request read is checked against the stop-and-read one (1e-3). Prints items/s of
each route, the mean over rounds with a bootstrap 95% interval over rounds, and the ratio
one-request / stop-and-read, the mean of the rounds' ratios with a paired bootstrap 95%
interval over rounds (both routes run in every round); writes
bench/results/critique-routes.json (with every round's items/s) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client.protocol import StructuredScoreRequest  # noqa: E402

from bench import charts, figures  # noqa: E402
from bench.overhead import load_items  # noqa: E402
from service.cli.judge import open_runtime  # noqa: E402
from service.config import Settings  # noqa: E402
from service.core.tasks import CritiqueRow, ScoringTask  # noqa: E402
from service.engines import critique  # noqa: E402
from service.offline import intervals  # noqa: E402
from service.requests.score import prepare_score  # noqa: E402


def tasks(runtime: Any, items: list[dict], tag: str, max_tokens: int, marker: str) -> list[ScoringTask]:
    fresh = [
        {"id": str(i), "instruction": f"[{tag}] {item['instruction'][:400]}", "response": item["response"][:400]}
        for i, item in enumerate(items)
    ]
    request = StructuredScoreRequest.model_validate(
        {"items": fresh, "critique": {"max_tokens": max_tokens, "marker": marker}}
    )
    return prepare_score(request, *runtime.require_ready(), runtime.model_name).tasks


async def one_request(engine: Any, task: ScoringTask, request_id: str) -> tuple[tuple[float, ...], bool]:
    """The labels' log-probabilities read in the generating request itself; falls back to
    the engine's own read where the marker never came."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    spec = task.critique
    assert spec is not None and task.trie is None
    params = SamplingParams(
        max_tokens=spec.max_tokens + 1,
        temperature=0.0,
        logprob_token_ids=list(task.label_ids),
        output_kind=RequestOutputKind.DELTA,
        skip_special_tokens=False,
    )
    decode = critique.decoder(engine.tokenizer)
    generated: list[int] = []
    found: bool | None = None
    read: tuple[float, ...] | None = None
    stream = engine._engine.generate(TokensPrompt(prompt_token_ids=list(task.token_ids)), params, request_id=request_id)
    async for output in stream:
        step = output.outputs[0]
        for token, logprobs in zip(step.token_ids, step.logprobs or [], strict=False):
            if found:
                # This token was chosen from the distribution right after the marker.
                read = tuple(float(logprobs[label].logprob) for label in task.label_ids)
                break
            found = critique.extend(generated, token, spec, engine._stop_ids, decode)
            if found is False:
                break
        if read is not None or found is False or output.finished:
            break
    if not output.finished:
        await engine._engine.abort(request_id)
    if read is not None:
        return read, True
    scores = await engine._score_one(task.after(generated, bool(found)))
    return scores.logprobs, bool(found)


async def run_round(engine: Any, batch: list[ScoringTask], route: str, round_no: int) -> tuple[float, list]:
    started = time.perf_counter()
    if route == "stop-and-read":
        results = await engine.critique(batch, [CritiqueRow(math.inf) for _ in batch])
        reads = [(r.logprobs, bool(r.critique and r.critique.marker_found)) for r in results]
    else:
        reads = await asyncio.gather(*(one_request(engine, t, f"route-{round_no}-{i}") for i, t in enumerate(batch)))
    return time.perf_counter() - started, reads


async def measure(args: argparse.Namespace) -> dict:
    items = load_items(args.items)
    settings = Settings(engine="vllm", max_items=args.items, cpu_kvcache_space_gb=2)
    rows: list[dict] = []
    async with open_runtime(settings) as runtime:
        engine = runtime.engine
        warm = tasks(runtime, items, "warm", args.max_tokens, args.marker)
        await engine.critique(warm, [CritiqueRow(math.inf) for _ in warm])
        worst = 0.0
        for round_no in range(args.rounds):
            timed: dict[str, tuple[float, list]] = {}
            order = ("stop-and-read", "one-request") if round_no % 2 == 0 else ("one-request", "stop-and-read")
            for route in order:
                batch = tasks(runtime, items, f"{route}-{round_no}", args.max_tokens, args.marker)
                timed[route] = await run_round(engine, batch, route, round_no)
            # The same prompts under both routes give the same reads (different tags: re-read both).
            check = tasks(runtime, items, f"check-{round_no}", args.max_tokens, args.marker)
            _, a = await run_round(engine, check, "stop-and-read", round_no)
            _, b = await run_round(engine, check, "one-request", 1000 + round_no)
            for (la, fa), (lb, fb) in zip(a, b, strict=True):
                assert fa == fb, "the routes disagree on whether the marker came"
                worst = max(worst, *(abs(x - y) for x, y in zip(la, lb, strict=True)))
            found = sum(f for _, f in timed["stop-and-read"][1])
            row = {route: args.items / wall for route, (wall, _) in timed.items()}
            rows.append({**row, "round": round_no, "marker_found": found})
            print(
                f"round {round_no}: stop-and-read {row['stop-and-read']:.3f} items/s, "
                f"one request {row['one-request']:.3f} items/s, marker found in {found}/{args.items}",
                flush=True,
            )
    assert worst <= 1e-3, f"the routes' reads differ by {worst}"
    report: dict = {"engine": "vllm", "items": args.items, "max_tokens": args.max_tokens, "marker": args.marker}
    report["max_read_difference"] = worst
    for route in ("stop-and-read", "one-request"):
        key = f"{route.replace('-', '_')}_items_per_s"
        report[key], report[f"{key}_ci"] = figures.mean([row[route] for row in rows])
    ratios = [row["one-request"] / row["stop-and-read"] for row in rows]
    key = "ratio_one_request_over_stop_and_read"
    report[key], report[f"{key}_ci"] = figures.mean(ratios)
    return report | {"rounds": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--marker", default=".")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "critique-routes.json")
    args = parser.parse_args()
    report = asyncio.run(measure(args))
    for route in ("stop_and_read", "one_request"):
        key = f"{route}_items_per_s"
        print(f"{route.replace('_', '-')}: {intervals.fmt(report[key], report[f'{key}_ci'])} items/s")
    ratio = intervals.fmt(
        report["ratio_one_request_over_stop_and_read"], report["ratio_one_request_over_stop_and_read_ci"]
    )
    print(f"one request / stop-and-read items/s: {ratio}; largest read difference {report['max_read_difference']:.1e}")
    figures.write(args.out, report)
    charts.draw(args.out)


if __name__ == "__main__":
    main()

"""Several criteria per item: the marginal cost of each added criterion, per template.

    .venv/bin/python bench/criteria.py [--engine transformers|vllm] [--items 16] [--counts 1,2,4,8]

Scores Topical-Chat items one request at a time (the whole service path in-process: limits,
queue, batching, engine), each request carrying K criteria (``rubrics``), under both
templates: ``default`` (rubric before the response: the K prompts of an item share the
system text and the task) and ``rubric_last`` (the response before the rubric: they
share the response too). Every (template, K) run tags its instructions, so no run reuses
another's cached prefix (vLLM). Reports seconds per item for each K, and the marginal
cost of a criterion, ``(t(K) - t(1)) / (K - 1) / t(1)``: the share of a one-criterion
request that each further criterion adds (1 would be no sharing at all), with a
bootstrap 95% interval over items. Writes bench/results/criteria-<engine>.json (with every
item's seconds) and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client.protocol import score_request  # noqa: E402

from bench import charts, figures  # noqa: E402
from service.cli.judge import in_process_settings, open_runtime  # noqa: E402
from service.offline import intervals  # noqa: E402
from service.serving import ScoreService  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "topical_chat_usr.jsonl"
SCALE = {
    "1": "Very poor.",
    "2": "Poor.",
    "3": "Fair.",
    "4": "Good.",
    "5": "Excellent.",
}
CRITERIA = {
    "understandable": "Is the response understandable in the context of the conversation?",
    "natural": "Is the response natural, as a person would say it?",
    "context": "Does the response keep to the context of the conversation?",
    "interesting": "Is the response interesting and engaging?",
    "knowledge": "Does the response use the given fact well?",
    "overall": "Overall, how good is the response as the next turn?",
    "concise": "Is the response concise?",
    "polite": "Is the response polite?",
}


def request(rows: list[dict], k: int, template: str, tag: str) -> dict:
    rubrics = {name: {"criteria": text, "score_descriptions": SCALE} for name, text in list(CRITERIA.items())[:k]}
    items = [{"id": r["id"], "instruction": f"[{tag}] " + r["instruction"], "response": r["response"]} for r in rows]
    return {"items": items, "rubrics": rubrics, "template": template}


async def measure(engine: str, rows: list[dict], counts: list[int]) -> dict[str, dict[int, list[float]]]:
    settings = in_process_settings(engine=engine, max_items=len(rows), cpu_kvcache_space_gb=2)
    times: dict[str, dict[int, list[float]]] = {}
    async with open_runtime(settings) as runtime:
        service = ScoreService(runtime, runtime.online)
        # Warm-up, not timed.
        await service.serve(score_request(request(rows[:2], 2, "default", "warm")), None, None)
        for template in ("default", "rubric_last"):
            for k in counts:
                per_item = []
                for row in rows:
                    payload = score_request(request([row], k, template, f"{template}-{k}"))
                    started = time.perf_counter()
                    await service.serve(payload, None, None)
                    per_item.append(time.perf_counter() - started)
                times.setdefault(template, {})[k] = per_item
                print(f"{template:<12} K={k}: {1000 * float(np.mean(per_item)):7.0f} ms/item", flush=True)
    return times


def marginal(times: dict[int, list[float]], k: int) -> tuple[float, tuple[float, float]]:
    """The marginal cost of a criterion at K, and its bootstrap interval over items."""
    one, many = np.asarray(times[1]), np.asarray(times[k])

    def cost(idx: np.ndarray) -> float:
        return float((many[idx].mean() - one[idx].mean()) / (k - 1) / one[idx].mean())

    return cost(np.arange(len(one))), intervals.bootstrap(cost, len(one))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--counts", default="1,2,4,8")
    parser.add_argument("--out", type=Path, help="default: bench/results/criteria-<engine>.json")
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / f"criteria-{args.engine}.json"
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()][: args.items]
    counts = [int(c) for c in args.counts.split(",")]
    times = asyncio.run(measure(args.engine, rows, counts))
    report: dict = {"engine": args.engine, "items": len(rows), "templates": {}}
    for template, by_k in times.items():
        entry: dict = {"seconds_per_item": {str(k): float(np.mean(v)) for k, v in by_k.items()}, "marginal": {}}
        entry["seconds_per_item_ci"] = {str(k): list(intervals.mean_interval(v)) for k, v in by_k.items()}
        entry["item_seconds"] = {str(k): v for k, v in by_k.items()}
        for k in counts[1:]:
            value, bounds = marginal(by_k, k)
            entry["marginal"][str(k)] = {"cost": value, "ci": list(bounds)}
            print(f"{template:<12} K={k}: each added criterion costs {intervals.fmt(value, bounds)} of one")
        report["templates"][template] = entry
    figures.write(out, report)
    charts.draw(out)


if __name__ == "__main__":
    main()

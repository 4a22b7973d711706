"""Pairwise agreement with human majority votes on pandalm_pairs.jsonl.

    .venv/bin/python bench/pairwise.py [--data ../shared/data/pandalm_pairs.jsonl] [--limit N]

Scores every pair in both orders in-process (the same code path as POST /v1/compare) and
reports accuracy against the human majority ("a", "b" or "tie") with and without position
swapping, and the mean position consistency, each with a bootstrap 95% interval over
pairs (``service.offline.intervals``; an accuracy of 0 or 1 gets the exact binomial one). Writes
bench/results/pairwise_pandalm.json with every pair's verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client.protocol import CompareRequest  # noqa: E402

from bench import figures  # noqa: E402
from service.cli.judge import in_process_settings, open_judge  # noqa: E402
from service.offline import intervals  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "pandalm_pairs.jsonl"


def three_way(p_a: float, p_tie: float, p_b: float) -> str:
    return max((("a", p_a), ("tie", p_tie), ("b", p_b)), key=lambda kv: kv[1])[0]


async def run(rows: list[dict], chunk: int) -> list[dict]:
    out = []
    async with open_judge(in_process_settings()) as judge:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            pairs = [
                {
                    "id": r["id"],
                    "instruction": str(r["instruction"]),
                    "response_a": str(r["response_a"]),
                    "response_b": str(r["response_b"]),
                }
                for r in part
            ]
            response = await judge.compare(CompareRequest.model_validate({"pairs": pairs}))
            for row, result in zip(part, response.results, strict=True):
                ab = result.orders["ab"]
                out.append(
                    {
                        "id": row["id"],
                        "human": row["human_preference"],
                        "swapped": three_way(result.p_a_wins, result.p_tie, result.p_b_wins),
                        "ab_only": three_way(ab["A>>B"] + ab["A>B"], ab["A=B"], ab["B>A"] + ab["B>>A"]),
                        "consistency": result.position_consistency,
                    }
                )
            print(f"{len(out)}/{len(rows)}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pairwise_pandalm.json")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    started = time.perf_counter()
    scored = asyncio.run(run(rows, chunk=16))
    report: dict = {"pairs": len(scored)}
    for name, key in (("accuracy_without_swap", "ab_only"), ("accuracy_with_swap", "swapped")):
        right = [s[key] == s["human"] for s in scored]
        report[name], report[f"{name}_ci"] = sum(right) / len(right), list(intervals.rate_interval(right))
    consistency = [s["consistency"] for s in scored]
    report["mean_position_consistency"], report["mean_position_consistency_ci"] = figures.mean(consistency)
    report |= {
        "human_majority": {k: sum(s["human"] == k for s in scored) for k in ("a", "b", "tie")},
        "predicted_with_swap": {k: sum(s["swapped"] == k for s in scored) for k in ("a", "b", "tie")},
        "predicted_without_swap": {k: sum(s["ab_only"] == k for s in scored) for k in ("a", "b", "tie")},
        "seconds": time.perf_counter() - started,
    }
    figures.write(args.out, report | {"per_pair": scored})
    for key, value in report.items():
        bounds = report.get(f"{key}_ci")
        if not key.endswith("_ci"):
            print(f"{key}: {intervals.fmt(value, bounds) if bounds else value}")


if __name__ == "__main__":
    main()

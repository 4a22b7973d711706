"""Ranking: how well the O(N log N) pairwise design agrees with comparing every pair.

    .venv/bin/python bench/rank.py [--sets 6] [--n 16]

Builds candidate sets from PandaLM: an instruction with its five distinct responses, filled
up to N with responses to other instructions (seeded). Every pair of a set is judged in
both orders once, as ``/v1/rank`` does (the same prompts, through the service's queue);
the all-pairs Bradley-Terry ranking uses them all, the circulant design of
``service.methods.ranking`` (as served above 8 candidates) only its own pairs, so both rankings
come from the same judgements. Also for the first 12 candidates of each set. Reports
Kendall's tau between the two rankings and how often they agree on the best candidate,
averaged over 5 shuffles of the design per set, with bootstrap 95% intervals over sets.
Writes bench/results/rank-agreement.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judge_client.protocol import RankRequest  # noqa: E402

from bench import charts, figures  # noqa: E402
from service.cli.judge import in_process_settings, open_runtime  # noqa: E402
from service.methods import pairwise, ranking  # noqa: E402
from service.offline import intervals  # noqa: E402
from service.requests.rank import pairwise_tasks  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pandalm_pairs.jsonl"
SHUFFLES = 5


def candidate_sets(count: int, n: int, seed: int) -> list[tuple[str, list[str]]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    by_instruction: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        for response in (str(row["response_a"]), str(row["response_b"])):
            if response not in by_instruction[str(row["instruction"])]:
                by_instruction[str(row["instruction"])].append(response)
    rng = random.Random(seed)
    full = sorted(i for i, responses in by_instruction.items() if len(responses) == 5)
    others = sorted({r for responses in by_instruction.values() for r in responses})
    sets = []
    for instruction in rng.sample(full, count):
        own = by_instruction[instruction]
        fill = rng.sample([r for r in others if r not in own], n - len(own))
        candidates = own + fill
        rng.shuffle(candidates)
        sets.append((instruction, candidates))
    return sets


async def judge_all_pairs(sets: list[tuple[str, list[str]]]) -> list[list[float]]:
    """P(first wins) for every pair of every set, from the rank service's own pairwise path."""
    out = []
    async with open_runtime(in_process_settings(max_items=64)) as runtime:
        prompts, limits = runtime.require_ready()
        for number, (instruction, candidates) in enumerate(sets):
            request = RankRequest.model_validate(
                {
                    "instruction": instruction,
                    "candidates": [{"id": str(i), "response": c} for i, c in enumerate(candidates)],
                }
            )
            pairs = ranking.all_pairs(len(candidates))
            started = time.perf_counter()
            tasks = await asyncio.to_thread(pairwise_tasks, request, pairs, prompts, limits)
            results = await runtime.online.run(tasks, time.monotonic() + 7200, None)
            out.append(pairwise.first_wins([r.logprobs for r in results]))
            print(
                f"set {number + 1}/{len(sets)}: {len(pairs)} pairs in {time.perf_counter() - started:.0f} s", flush=True
            )
    return out


def agreement(n: int, p_first_all: list[float], total: int) -> dict[str, float]:
    """All-pairs ranking of the first n candidates against the circulant design's."""
    index = {pair: k for k, pair in enumerate(ranking.all_pairs(total))}
    pairs = ranking.all_pairs(n)
    probs = [p_first_all[index[pair]] for pair in pairs]
    reference = ranking.fit_bradley_terry(ranking.win_matrix(n, pairs, probs))
    taus, tops, used = [], [], 0
    for seed in range(SHUFFLES):
        design = ranking.circulant_pairs(n, seed)
        used = len(design)
        fitted = ranking.fit_bradley_terry(ranking.win_matrix(n, design, [p_first_all[index[p]] for p in design]))
        taus.append(ranking.kendall_tau(reference, fitted))
        tops.append(float(np.argmax(reference) == np.argmax(fitted)))
    return {"tau": float(np.mean(taus)), "top1": float(np.mean(tops)), "pairs": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", type=int, default=6)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rank-agreement.json")
    args = parser.parse_args()
    sets = candidate_sets(args.sets, args.n, args.seed)
    judged = asyncio.run(judge_all_pairs(sets))
    rows = []
    for n in sorted({12, args.n}):
        per_set = [agreement(n, p, args.n) for p in judged]
        taus, tops = [s["tau"] for s in per_set], [s["top1"] for s in per_set]
        row = {
            "n": n,
            "sets": len(per_set),
            "pairs_all": n * (n - 1) // 2,
            "pairs_design": per_set[0]["pairs"],
            "kendall_tau": float(np.mean(taus)),
            "kendall_tau_ci": list(intervals.mean_interval(taus)),
            "top1_agreement": float(np.mean(tops)),
            "top1_agreement_ci": list(intervals.mean_interval(tops)),
            "per_set_tau": taus,
            "per_set_top1": tops,
        }
        rows.append(row)
        print(
            f"N={n}: {row['pairs_design']} of {row['pairs_all']} pairs; Kendall tau with all pairs "
            f"{intervals.fmt(row['kendall_tau'], row['kendall_tau_ci'])}, same best candidate "
            f"{intervals.fmt(row['top1_agreement'], row['top1_agreement_ci'])}"
        )
    figures.write(args.out, {"data": DATA.name, "shuffles": SHUFFLES, "rows": rows})
    charts.draw(args.out)


if __name__ == "__main__":
    main()

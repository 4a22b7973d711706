"""Every scoring method on the pairwise human preferences of pandalm_pairs.jsonl.

    .venv/bin/python bench/lager_pairwise.py [--limit N] [--url URL [--api-key KEY]]

The pairwise set has preferences, not scores, so each response is scored alone (the
default 1-5 rubric, one ``return_layers`` pass per layer-norm variant) and a method's
verdict on a pair is the difference of its two scores. Agreement with the human
majority, coded a = +1, tie = 0, b = -1: Spearman and Kendall of that difference, and the
accuracy of its sign on the pairs the humans did not call a tie. ``lager_weighted`` uses
layer weights fitted in the same run on the fit split of topical_chat_usr.jsonl (seed 0,
half the items, as ``judge-service eval`` does): pointwise human scores, disjoint data.
Every method's figures come with bootstrap 95% intervals over pairs (``service.offline.intervals``,
as ``eval`` gives them). Writes bench/results/lager_pandalm.json, with every pair's
scores under every method, and a PNG of Spearman by layer beside it (the methods'
Spearman as lines, their intervals as bands).
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

from bench import figures  # noqa: E402
from service.cli.judge import add_judge_arguments  # noqa: E402
from service.cli.layers import fit_scored, open_scorer  # noqa: E402
from service.offline import evaluation, intervals  # noqa: E402
from service.requests.prompts import DEFAULT_RUBRIC  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PREFERENCE = {"a": 1.0, "tie": 0.0, "b": -1.0}


def pair_items(rows: list[dict]) -> list[evaluation.Labelled]:
    """Both responses of every pair as unlabelled pointwise items, a then b."""
    return [
        evaluation.Labelled(
            id=f"{row['id']}/{side}",
            instruction=str(row["instruction"]),
            response=str(row[f"response_{side}"]),
            reference=None,
            rubric=None,
            human=0.0,
        )
        for row in rows
        for side in ("a", "b")
    ]


def verdicts(diff: list[float], human: list[float]) -> tuple[list[bool], list[bool]]:
    """Per pair the humans did not tie, whether the difference's sign is theirs (a zero
    difference is wrong); per pair, whether the difference is zero (undecided)."""
    right = [(d > 0) == (h > 0) and d != 0 for d, h in zip(diff, human, strict=True) if h != 0]
    return right, [d == 0 for d in diff]


def agreement(scores: list[float], human: list[float]) -> dict[str, float]:
    """Agreement of per-response scores (a, b, a, b, ...) with the coded human preferences."""
    diff = [a - b for a, b in zip(scores[0::2], scores[1::2], strict=True)]
    row = evaluation.correlations(diff, human)
    right, undecided = verdicts(diff, human)
    return {
        "spearman": row["spearman"],
        "kendall": row["kendall"],
        "accuracy": sum(right) / len(right) if right else float("nan"),
        "undecided": sum(undecided) / len(undecided),
    }


def agreement_figures(scores: list[float], human: list[float]) -> dict[str, float | list[float]]:
    """``agreement`` with every figure's bootstrap 95% interval over pairs (``<figure>_ci``);
    a rate of all or nothing gets the exact interval instead (a bootstrap gives [0, 0] or [1, 1])."""
    pairs = np.asarray(scores, dtype=float).reshape(-1, 2)
    coded = np.asarray(human, dtype=float)

    def on(idx: np.ndarray) -> dict[str, float]:
        return agreement(pairs[idx].ravel().tolist(), coded[idx].tolist())

    out = intervals.with_intervals(on, len(coded))
    right, undecided = verdicts((pairs[:, 0] - pairs[:, 1]).tolist(), human)
    out["accuracy_ci"] = list(intervals.rate_interval(right))
    out["undecided_ci"] = list(intervals.rate_interval(undecided))
    return out


async def collect(args: argparse.Namespace, rows: list[dict]) -> tuple[str, list, list]:
    fit_items, _ = evaluation.split(evaluation.read_dataset(args.fit_data), 0.5, args.seed)
    async with open_scorer(args) as (scorer, model):
        fitted = await evaluation.collect_scores(fit_items, scorer)
        scored = await evaluation.collect_scores(pair_items(rows), scorer)
    return model, fitted, scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "pandalm_pairs.jsonl")
    parser.add_argument("--fit-data", type=Path, default=DATA / "topical_chat_usr.jsonl")
    parser.add_argument("--limit", type=int, help="only the first N pairs")
    parser.add_argument("--seed", type=int, default=0)
    add_judge_arguments(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lager_pandalm.json")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    started = time.perf_counter()
    model, fitted, scored = asyncio.run(collect(args, rows))
    weights = fit_scored(fitted, model, layer_norm=False, epochs=2, lr=0.01, seed=args.seed)
    labels = list(DEFAULT_RUBRIC.labels)
    values = [float(label) for label in labels]
    human = [PREFERENCE[row["human_preference"]] for row in rows]
    dists = evaluation.method_distributions(scored, labels, values, weights)
    per_method = evaluation.method_scores(dists, labels, values)
    methods = {name: agreement_figures(scores, human) for name, scores in per_method.items()}
    curves = {
        name: [agreement(layer, human)["spearman"] for layer in evaluation.layer_scores(scored, labels, values, normed)]
        for name, normed in (("layer (no final norm)", False), ("layer (final norm, logit lens)", True))
    }
    report = {
        "data": args.data.name,
        "model": model,
        "pairs": len(rows),
        "human_majority": {k: sum(r["human_preference"] == k for r in rows) for k in PREFERENCE},
        "weights_fitted_on": f"{args.fit_data.name}, {len(fitted)} items",
        "methods": methods,
        "per_layer_spearman": curves,
        "seconds": time.perf_counter() - started,
        "per_pair": {
            "id": [row["id"] for row in rows],
            "human": human,
            "scores_a_b": {name: np.asarray(s).reshape(-1, 2).tolist() for name, s in per_method.items()},
        },
    }
    figures.write(args.out, report)
    shown = ("final (expected)", "lager")
    evaluation.plot_layers(
        curves,
        {name: methods[name]["spearman"] for name in shown},
        args.out.with_suffix(".png"),
        f"{model} on {args.data.name}, score(a) - score(b)",
        ylabel="Spearman with human preference",
        reference_ci={name: methods[name]["spearman_ci"] for name in shown},
    )
    print(f"{len(rows)} pairs; human majority {report['human_majority']}")
    names = ("spearman", "kendall", "accuracy", "undecided")
    print(f"{'method':<24} " + " ".join(f"{n:>22}" for n in names))
    for name, row in methods.items():
        print(f"{name:<24} " + " ".join(f"{intervals.fmt(row[n], row[n + '_ci']):>22}" for n in names))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

"""``judge-service eval``: agreement with human scores of every method, raw and calibrated,
the probe's too, each figure with its bootstrap 95% interval, optionally by group.

No figure is measured on its own training data. Fitted files given (``--weights``,
``--calibration``, ``--probe``) leave out the items they were fitted on; whatever is not
given is fitted in the same run on the file's fit part (``--fit-fraction``, ``--seed``),
which is then left out too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.cli import calibration as calibration_cli
from service.cli import probe as probe_cli
from service.cli.layers import add_common, fit_scored, labels_and_values, load_items, open_scorer
from service.methods import calibration, review, scoring
from service.methods.calibration import Calibration
from service.methods.lager import LayerWeights
from service.methods.probe import Probe
from service.methods.readout import METHODS, Fitted
from service.offline import evaluation, intervals


async def _score(args: argparse.Namespace) -> dict[str, Any]:
    items = load_items(args)
    weights = LayerWeights.load(args.weights) if args.weights else None
    fitted_cal = Calibration.load(args.calibration) if args.calibration else None
    probe = Probe.load(args.probe) if args.probe else None
    layers = probe.layers if probe else probe_cli.parse_layers(args.probe_layers)
    fit_items, _ = evaluation.split(items, args.fit_fraction, args.seed)
    fit_in_run = None in (weights, fitted_cal, probe)
    held_out = {it.id for it in fit_items} if fit_in_run else set()
    for given in (weights, fitted_cal, probe):
        held_out |= set(given.fit_ids) if given is not None else set()
    eval_items = [it for it in items if it.id not in held_out]
    async with open_scorer(args) as (scorer, model):
        if fit_in_run:
            fit_set = await evaluation.collect_scores(
                fit_items, scorer, progress=not args.no_progress, hidden_layers=layers, template=args.template
            )
            weights = weights or fit_scored(fit_set, model, args.layer_norm, args.epochs, args.lr, args.seed)
            fitted_cal = fitted_cal or calibration_cli.fit_scored(
                fit_set, model, args.template, args.target_error, args.conformal_fraction, args.folds, args.seed
            )
            probe = probe or probe_cli.fit_scored(fit_set, layers, model, args.template, args.folds, args.seed)
        scored = await evaluation.collect_scores(
            eval_items, scorer, progress=not args.no_progress, hidden_layers=layers, template=args.template
        )
    assert weights is not None and fitted_cal is not None and probe is not None
    return report(args, model, scored, weights, fitted_cal, probe, len(held_out))


def extra_methods(
    scored: Sequence[evaluation.Scored], labels: list[str], values: list[float], cal: Calibration, probe: Probe
) -> dict[str, list[scoring.Distribution]]:
    """The calibrated ``final`` distribution and the probe's, for every item."""
    final = np.asarray([scoring.from_logprobs(labels, s.final_logprobs, values).probs for s in scored])
    out = {"final, calibrated": [scoring.from_probs(labels, row, values) for row in cal.apply_many(final)]}
    fitted = Fitted(probe=probe)
    out["probe"] = [METHODS["probe"].distribution(s.readout, labels, values, fitted) for s in scored]
    return out


def conformal(cal: Calibration, dists: Sequence[scoring.Distribution], human: Sequence[float]) -> dict[str, Any]:
    """Coverage of the calibration's conformal prediction sets on items it never saw, and
    the review flags they raise."""
    limit = cal.min_calibrated_probability
    if limit is None:
        return {}
    truth = [calibration.nearest_label(h, cal.values) for h in human]
    covered = [float(d.probs[t] >= limit) for d, t in zip(dists, truth, strict=True)]
    flagged = [float(not review.pins_one_label(d.probs, limit)) for d in dists]
    wrong = [float(d.probs.index(max(d.probs)) != t) for d, t in zip(dists, truth, strict=True)]
    unflagged_wrong = [(1 - f) * w for f, w in zip(flagged, wrong, strict=True)]
    return {
        "target_error": cal.target_error,
        "min_calibrated_probability": limit,
        "coverage": float(np.mean(covered)),
        "coverage_ci": list(intervals.mean_interval(covered)),
        "flagged": float(np.mean(flagged)),
        "flagged_ci": list(intervals.mean_interval(flagged)),
        "unflagged_and_wrong": float(np.mean(unflagged_wrong)),
        "unflagged_and_wrong_ci": list(intervals.mean_interval(unflagged_wrong)),
        "mean_set_size": float(np.mean([len(review.prediction_set(d.probs, limit)) for d in dists])),
    }


def report(
    args: argparse.Namespace,
    model: str,
    scored: list[evaluation.Scored],
    weights: LayerWeights,
    cal: Calibration,
    probe: Probe,
    left_out: int,
) -> dict[str, Any]:
    labels, values = labels_and_values([s.item for s in scored])
    extra = extra_methods(scored, labels, values, cal, probe)
    rows = evaluation.method_rows(scored, labels, values, weights, extra)
    groups: dict[str, Any] = {}
    if args.group_by:
        for value in sorted({str(s.item.fields.get(args.group_by)) for s in scored}):
            index = [i for i, s in enumerate(scored) if str(s.item.fields.get(args.group_by)) == value]
            part = [scored[i] for i in index]
            part_extra = {name: [ds[i] for i in index] for name, ds in extra.items()}
            groups[value] = {
                "items": len(part),
                "methods": evaluation.method_rows(part, labels, values, weights, part_extra),
            }
    curves = {
        "layer (no final norm)": evaluation.per_layer_spearman(scored, labels, values, normed=False),
        "layer (final norm, logit lens)": evaluation.per_layer_spearman(scored, labels, values, normed=True),
    }
    return {
        "data": args.data.name,
        "model": model,
        "fit_items": left_out,
        "eval_items": len(scored),
        "seed": args.seed,
        "methods": rows,
        "conformal": conformal(cal, extra["final, calibrated"], [s.item.human for s in scored]),
        "calibration": {"kind": cal.kind, "cv_cross_entropy": cal.cv_cross_entropy},
        "probe": {"layers": probe.layers, "strength": probe.strength},
        "group_by": args.group_by,
        "groups": groups,
        "per_layer_spearman": curves,
        "layer_weights": weights.weights,
    }


def print_rows(rows: dict[str, dict[str, Any]]) -> None:
    names = ("spearman", "pearson", "kendall", "mae", "ece")
    print(f"{'method':<22} " + " ".join(f"{name:>22}" for name in names))
    for method, row in rows.items():
        print(f"{method:<22} " + " ".join(f"{intervals.fmt(row[n], row[n + '_ci']):>22}" for n in names))


def eval_command(args: argparse.Namespace) -> None:
    result = asyncio.run(_score(args))
    report_path = args.report or args.data.with_suffix(".report.json").name
    Path(report_path).write_text(json.dumps(result, indent=2))
    plot_path = args.plot or Path(report_path).with_suffix(".png")
    shown = ("final (expected)", "lager", "probe")
    evaluation.plot_layers(
        result["per_layer_spearman"],
        {name: result["methods"][name]["spearman"] for name in shown},
        Path(plot_path),
        f"{result['model']} on {result['data']}",
        reference_ci={name: result["methods"][name]["spearman_ci"] for name in shown},
    )
    print(
        f"{result['eval_items']} evaluation items (fitting used {result['fit_items']} others); 95% bootstrap intervals"
    )
    print_rows(result["methods"])
    if result["conformal"]:
        c = result["conformal"]
        print(
            f"conformal (target error {c['target_error']}): coverage {intervals.fmt(c['coverage'], c['coverage_ci'])}, "
            f"flagged {intervals.fmt(c['flagged'], c['flagged_ci'])}, unflagged and wrong "
            f"{intervals.fmt(c['unflagged_and_wrong'], c['unflagged_and_wrong_ci'])}"
        )
    for value, group in result["groups"].items():
        print(f"\n{args.group_by} = {value} ({group['items']} items)")
        print_rows(group["methods"])
    print(f"wrote {report_path} and {plot_path}")


def register(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("eval", help="Agreement with human scores for every method, calibrated and probed too.")
    add_common(ev)
    ev.add_argument("--weights", type=Path, help="fitted layer weights; their fit items are left out")
    ev.add_argument("--calibration", type=Path, help="fitted calibration; its fit items are left out")
    ev.add_argument("--probe", type=Path, help="fitted probe; its fit items are left out")
    ev.add_argument("--probe-layers", default=",".join(map(str, probe_cli.DEFAULT_LAYERS)), help="in-run probe layers")
    ev.add_argument("--group-by", help="also report every figure per value of this field of the data")
    ev.add_argument("--layer-norm", action="store_true", help="fit in-run weights on final-normed layers")
    ev.add_argument("--epochs", type=int, default=2)
    ev.add_argument("--lr", type=float, default=0.01)
    calibration_cli.add_calibration_options(ev)
    ev.add_argument("--report", type=Path, help="report JSON (default: <data>.report.json)")
    ev.add_argument("--plot", type=Path, help="PNG of Spearman by layer (default: beside the report)")
    ev.set_defaults(handler=eval_command)

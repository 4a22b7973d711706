"""``judge-service fit-calibration``: map the judge's label distribution onto the human scale.

The file's fit part (``--fit-fraction``, ``--seed``; the rest is left for ``eval``) is
split again: ``--conformal-fraction`` of it only sets the review threshold by split
conformal prediction, the rest fits the map, whose kind is chosen by cross-validation on
that rest (``service.methods.calibration``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.cli.layers import add_common, labels_and_values, load_items, open_scorer
from service.methods import calibration, review, scoring
from service.methods.calibration import Calibration
from service.offline import evaluation

METHOD = "final"


def one_version(scored: Sequence[evaluation.Scored]) -> str:
    """The prompt version all items were scored under; a fit needs exactly one."""
    versions = {s.prompt_version for s in scored}
    if len(versions) != 1:
        raise SystemExit(f"the items were scored under {len(versions)} prompt versions (rubrics); fit one at a time")
    return versions.pop()


def fit_scored(
    scored: Sequence[evaluation.Scored],
    model: str,
    template: str,
    target_error: float,
    conformal_fraction: float,
    folds: int,
    seed: int,
) -> Calibration:
    """Fit a calibration of the ``final`` distribution and its conformal review threshold."""
    labels, values = labels_and_values([s.item for s in scored])
    order = list(scored)
    random.Random(seed).shuffle(order)
    cut = round(len(order) * conformal_fraction)
    held, fit = order[:cut], order[cut:]
    if len(fit) < 2:
        raise SystemExit(f"{len(fit)} items left to fit the calibration on; give more data")
    value_a = np.asarray(values)

    def probs(part: Sequence[evaluation.Scored]) -> np.ndarray:
        return np.asarray([scoring.from_logprobs(labels, s.final_logprobs, values).probs for s in part])

    kind, params, losses = calibration.choose_and_fit(
        probs(fit), np.asarray([s.item.human for s in fit]), value_a, folds, seed
    )
    result = Calibration(
        kind=kind,
        params=params,
        model=model,
        labels=list(labels),
        values=list(values),
        method=METHOD,
        template=template,
        prompt_version=one_version(scored),
        cv_cross_entropy=losses,
        fit_ids=[s.item.id for s in scored],
        conformal_ids=[s.item.id for s in held],
    )
    if held:
        calibrated = result.apply_many(probs(held))
        truth = [calibration.nearest_label(s.item.human, values) for s in held]
        true_probs = [float(calibrated[i, t]) for i, t in enumerate(truth)]
        result.target_error = target_error
        result.min_calibrated_probability = review.conformal_threshold(true_probs, target_error)
    return result


async def _collect(args: argparse.Namespace, items: list[evaluation.Labelled]) -> tuple[list[evaluation.Scored], str]:
    async with open_scorer(args) as (scorer, model):
        scored = await evaluation.collect_scores(
            items, scorer, progress=not args.no_progress, layers=False, template=args.template
        )
    return scored, model


def fit_calibration_command(args: argparse.Namespace) -> None:
    fit_items, _ = evaluation.split(load_items(args), args.fit_fraction, args.seed)
    scored, model = asyncio.run(_collect(args, fit_items))
    result = fit_scored(scored, model, args.template, args.target_error, args.conformal_fraction, args.folds, args.seed)
    result.save(args.output)
    losses = ", ".join(f"{k} {v:.3f}" for k, v in result.cv_cross_entropy.items())
    print(
        f"fitted on {len(fit_items) - len(result.conformal_ids)} items: chose {result.kind} "
        f"(cv cross-entropy: {losses})"
    )
    if result.min_calibrated_probability is not None:
        print(
            f"review threshold {result.min_calibrated_probability:.3f} for target error {result.target_error} "
            f"from {len(result.conformal_ids)} conformal items"
        )
    print(f"wrote {args.output}")


def add_calibration_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-error", type=float, default=0.2, help="conformal target error rate alpha")
    parser.add_argument("--conformal-fraction", type=float, default=0.3, help="share of fit items for the threshold")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")


def register(commands: argparse._SubParsersAction) -> None:
    fit = commands.add_parser("fit-calibration", help="Calibrate the judge's distribution against human scores.")
    add_common(fit)
    fit.add_argument("-o", "--output", type=Path, required=True, help="calibration JSON to write")
    add_calibration_options(fit)
    fit.set_defaults(handler=fit_calibration_command)

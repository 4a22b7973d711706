"""``judge-service fit-probe``: a learned readout of the judge's hidden states.

Scores the file's fit part (``--fit-fraction``, ``--seed``; the rest is left for
``eval``) asking for the hidden rows of ``--layers``, and fits ``service.methods.probe``'s
regularised multinomial logistic regression to the human scores, its L2 strength chosen
by cross-validation on those items.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.cli.calibration import one_version
from service.cli.layers import add_common, labels_and_values, load_items, open_scorer
from service.methods.probe import Probe, fit_probe
from service.offline import evaluation

# The hidden-state entry read by default: the middle of the default 30-layer model. Chosen
# by 5-fold cross-validation on the fit half of the Topical-Chat split only (single layers
# 4..30 and several concatenations of them; layer 16 alone did best there); ``--layers``
# chooses others, and a model of another depth needs its own.
DEFAULT_LAYERS = (16,)


def parse_layers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def features(scored: Sequence[evaluation.Scored]) -> np.ndarray:
    """[N, layers x hidden]: each item's hidden rows, concatenated in the order asked."""
    assert all(s.hidden is not None for s in scored)
    return np.asarray([np.concatenate([np.asarray(row) for row in s.hidden or ()]) for s in scored])


def fit_scored(
    scored: Sequence[evaluation.Scored], layers: Sequence[int], model: str, template: str, folds: int, seed: int
) -> Probe:
    labels, values = labels_and_values([s.item for s in scored])
    human = np.asarray([s.item.human for s in scored])
    mean, scale, weights, bias, strength, losses = fit_probe(features(scored), human, np.asarray(values), folds, seed)
    return Probe(
        layers=list(layers),
        mean=mean.tolist(),
        scale=scale.tolist(),
        weights=weights.tolist(),
        bias=bias.tolist(),
        strength=strength,
        model=model,
        labels=list(labels),
        values=list(values),
        template=template,
        prompt_version=one_version(scored),
        cv_cross_entropy={f"{k:g}": v for k, v in losses.items()},
        fit_ids=[s.item.id for s in scored],
    )


async def _collect(
    args: argparse.Namespace, items: list[evaluation.Labelled], layers: list[int]
) -> tuple[list[evaluation.Scored], str]:
    async with open_scorer(args) as (scorer, model):
        scored = await evaluation.collect_scores(
            items, scorer, progress=not args.no_progress, hidden_layers=layers, layers=False, template=args.template
        )
    return scored, model


def fit_probe_command(args: argparse.Namespace) -> None:
    layers = parse_layers(args.layers)
    fit_items, _ = evaluation.split(load_items(args), args.fit_fraction, args.seed)
    scored, model = asyncio.run(_collect(args, fit_items, layers))
    probe = fit_scored(scored, layers, model, args.template, args.folds, args.seed)
    probe.save(args.output)
    print(f"fitted a probe on layers {layers} over {len(fit_items)} items; L2 strength {probe.strength:g} (by cv)")
    print(f"wrote {args.output}")


def register(commands: argparse._SubParsersAction) -> None:
    fit = commands.add_parser("fit-probe", help="Learn a readout of hidden states that predicts human scores.")
    add_common(fit)
    fit.add_argument("-o", "--output", type=Path, required=True, help="probe JSON to write")
    fit.add_argument(
        "--layers", default=",".join(map(str, DEFAULT_LAYERS)), help="hidden-state entries (0 = embeddings)"
    )
    fit.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    fit.set_defaults(handler=fit_probe_command)

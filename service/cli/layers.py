"""``judge-service fit-layers``: LAGER weights; and what every fitting command shares."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from service.cli.judge import add_judge_arguments, open_from_args
from service.methods import scoring
from service.methods.lager import LayerWeights, fit_layer_weights
from service.offline import evaluation
from service.requests.prompts import DEFAULT_RUBRIC, TEMPLATES

logger = logging.getLogger(__name__)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="JSONL: instruction, response, human_score[, reference_answer, rubric]")
    add_judge_arguments(parser)
    parser.add_argument("--fit-fraction", type=float, default=0.5, help="share of items used for fitting")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit/eval split")
    parser.add_argument("--limit", type=int, help="use only the first N items of the file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--template", default="default", choices=TEMPLATES, help="prompt template")


@contextlib.asynccontextmanager
async def open_scorer(args: argparse.Namespace) -> AsyncIterator[tuple[evaluation.Scorer, str]]:
    """A scorer over HTTP (``--url``, with ``--api-key``) or on the in-process judge; also
    yields the model name."""
    async with open_from_args(args) as judge:
        yield judge.score, judge.model


def labels_and_values(items: list[evaluation.Labelled]) -> tuple[list[str], list[float]]:
    """The rubric's labels and their values: numeric labels are their number, other labels
    their position in score order (1, 2, ...), the scale human scores are given on."""
    rubric = items[0].rubric
    labels = list(rubric["score_descriptions"]) if rubric else list(DEFAULT_RUBRIC.labels)
    values = scoring.label_values(labels, None)
    return labels, list(values) if values is not None else [float(i) for i in range(1, len(labels) + 1)]


def load_items(args: argparse.Namespace) -> list[evaluation.Labelled]:
    items = evaluation.read_dataset(args.data)
    return items[: args.limit] if args.limit else items


async def _fit(args: argparse.Namespace, items: list[evaluation.Labelled]) -> LayerWeights:
    async with open_scorer(args) as (scorer, model):
        scored = await evaluation.collect_scores(items, scorer, progress=not args.no_progress, template=args.template)
    return fit_scored(scored, model, args.layer_norm, args.epochs, args.lr, args.seed)


def fit_scored(
    scored: list[evaluation.Scored], model: str, layer_norm: bool, epochs: int, lr: float, seed: int
) -> LayerWeights:
    _, values = labels_and_values([s.item for s in scored])
    matrices = [s.layers_normed if layer_norm else s.layers for s in scored]
    weights, losses = fit_layer_weights(
        matrices, [s.item.human for s in scored], values, epochs=epochs, lr=lr, seed=seed
    )
    return LayerWeights(weights, layer_norm, model, [s.item.id for s in scored], losses)


def fit_layers_command(args: argparse.Namespace) -> None:
    fit_items, _ = evaluation.split(load_items(args), args.fit_fraction, args.seed)
    weights = asyncio.run(_fit(args, fit_items))
    weights.save(args.output)
    print(f"fitted {len(weights.weights)} layer weights on {len(fit_items)} items; loss per epoch {weights.losses}")
    print(f"wrote {args.output}")


def register(commands: argparse._SubParsersAction) -> None:
    fit = commands.add_parser("fit-layers", help="Learn LAGER layer weights from human scores.")
    add_common(fit)
    fit.add_argument("-o", "--output", type=Path, required=True, help="weights JSON to write")
    fit.add_argument("--layer-norm", action="store_true", help="fit on final-normed layers (logit lens)")
    fit.add_argument("--epochs", type=int, default=2)
    fit.add_argument("--lr", type=float, default=0.01)
    fit.set_defaults(handler=fit_layers_command)

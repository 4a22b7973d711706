"""``judge-service fit-layers`` and ``judge-service eval``: LAGER weights and alignment reports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from service import evaluation, scoring
from service.cli.judge import add_judge_arguments, open_from_args
from service.lager import LayerWeights, fit_layer_weights
from service.prompts import DEFAULT_RUBRIC

logger = logging.getLogger(__name__)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="JSONL: instruction, response, human_score[, reference_answer, rubric]")
    add_judge_arguments(parser)
    parser.add_argument("--fit-fraction", type=float, default=0.5, help="share of items used for fitting")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit/eval split")
    parser.add_argument("--limit", type=int, help="use only the first N items of the file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


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


def _load(args: argparse.Namespace) -> list[evaluation.Labelled]:
    items = evaluation.read_dataset(args.data)
    return items[: args.limit] if args.limit else items


async def _fit(args: argparse.Namespace, items: list[evaluation.Labelled]) -> LayerWeights:
    async with open_scorer(args) as (scorer, model):
        scored = await evaluation.collect_scores(items, scorer, progress=not args.no_progress)
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
    fit_items, _ = evaluation.split(_load(args), args.fit_fraction, args.seed)
    weights = asyncio.run(_fit(args, fit_items))
    weights.save(args.output)
    print(f"fitted {len(weights.weights)} layer weights on {len(fit_items)} items; loss per epoch {weights.losses}")
    print(f"wrote {args.output}")


async def _evaluate(args: argparse.Namespace) -> dict:
    items = _load(args)
    weights = LayerWeights.load(args.weights) if args.weights else None
    async with open_scorer(args) as (scorer, model):
        if weights is not None:
            held_out = set(weights.fit_ids)
            eval_items = [it for it in items if it.id not in held_out]
            fit_count = len(items) - len(eval_items)
        else:
            fit_items, eval_items = evaluation.split(items, args.fit_fraction, args.seed)
            fit_count = len(fit_items)
            if fit_items:
                fit_scoredset = await evaluation.collect_scores(fit_items, scorer, progress=not args.no_progress)
                weights = fit_scored(fit_scoredset, model, args.layer_norm, args.epochs, args.lr, args.seed)
        scored = await evaluation.collect_scores(eval_items, scorer, progress=not args.no_progress)
    labels, values = labels_and_values(eval_items)
    rows = evaluation.method_rows(scored, labels, values, weights)
    curves = {
        "layer (no final norm)": evaluation.per_layer_spearman(scored, labels, values, normed=False),
        "layer (final norm, logit lens)": evaluation.per_layer_spearman(scored, labels, values, normed=True),
    }
    return {
        "data": args.data.name,
        "model": model,
        "fit_items": fit_count,
        "eval_items": len(eval_items),
        "seed": args.seed,
        "methods": rows,
        "per_layer_spearman": curves,
        "layer_weights": weights.weights if weights else None,
    }


def eval_command(args: argparse.Namespace) -> None:
    report = asyncio.run(_evaluate(args))
    report_path = args.report or args.data.with_suffix(".report.json").name
    Path(report_path).write_text(json.dumps(report, indent=2))
    plot_path = args.plot or Path(report_path).with_suffix(".png")
    reference = {name: report["methods"][name]["spearman"] for name in ("final (expected)", "lager")}
    evaluation.plot_layers(
        report["per_layer_spearman"], reference, Path(plot_path), f"{report['model']} on {report['data']}"
    )
    print(f"{report['eval_items']} evaluation items (fitting used {report['fit_items']} others)")
    print(f"{'method':<24} {'spearman':>9} {'pearson':>9} {'kendall':>9} {'mae':>7} {'ece':>7}")
    for name, row in report["methods"].items():
        print(
            f"{name:<24} {row['spearman']:>9.3f} {row['pearson']:>9.3f} {row['kendall']:>9.3f}"
            f" {row['mae']:>7.3f} {row['ece']:>7.3f}"
        )
    print(f"wrote {report_path} and {plot_path}")


def register(commands: argparse._SubParsersAction) -> None:
    fit = commands.add_parser("fit-layers", help="Learn LAGER layer weights from human scores.")
    add_common(fit)
    fit.add_argument("-o", "--output", type=Path, required=True, help="weights JSON to write")
    fit.add_argument("--layer-norm", action="store_true", help="fit on final-normed layers (logit lens)")
    fit.add_argument("--epochs", type=int, default=2)
    fit.add_argument("--lr", type=float, default=0.01)
    fit.set_defaults(handler=fit_layers_command)
    ev = commands.add_parser("eval", help="Agreement with human scores for every method, per layer too.")
    add_common(ev)
    ev.add_argument("--weights", type=Path, help="fitted weights; their fit items are left out of the evaluation")
    ev.add_argument("--layer-norm", action="store_true", help="fit in-run weights on final-normed layers")
    ev.add_argument("--epochs", type=int, default=2)
    ev.add_argument("--lr", type=float, default=0.01)
    ev.add_argument("--report", type=Path, help="report JSON (default: <data>.report.json)")
    ev.add_argument("--plot", type=Path, help="PNG of Spearman by layer (default: beside the report)")
    ev.set_defaults(handler=eval_command)

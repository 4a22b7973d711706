"""Alignment with human scores: collect per-layer label scores, fit, evaluate, report.

Used by ``judge-service fit-layers`` and ``judge-service eval``. Scores come from the
service itself, in-process or over HTTP, as one ``return_layers`` request per chunk.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from judge_client.protocol import ItemScore, RawScoreRequest, ScoreResponse, StructuredScoreRequest, score_request

from service.methods import scoring
from service.methods.lager import LayerWeights
from service.methods.readout import METHODS, Fitted, Readout
from service.offline import intervals

Scorer = Callable[[RawScoreRequest | StructuredScoreRequest], Awaitable[ScoreResponse]]


@dataclass(frozen=True)
class Labelled:
    """One human-labelled item of a JSONL data set."""

    id: str
    instruction: str
    response: str
    reference: str | None
    rubric: dict[str, Any] | None
    human: float
    # The whole row, for breakdowns by any field (eval --group-by).
    fields: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Scored:
    """The judge's view of one item: final log-probs, both per-layer matrices, and the
    hidden rows of ``hidden_layers`` (in that order)."""

    item: Labelled
    final_logprobs: tuple[float, ...]
    layers: tuple[tuple[float, ...], ...]  # raw (no final norm on intermediate layers)
    layers_normed: tuple[tuple[float, ...], ...]
    prompt_version: str = ""
    hidden: tuple[tuple[float, ...], ...] | None = None
    hidden_layers: tuple[int, ...] = ()

    @property
    def readout(self) -> Readout:
        """What the methods read, as serving reads it from an engine's result."""
        hidden = dict(zip(self.hidden_layers, self.hidden or (), strict=True))
        return Readout(self.final_logprobs, self.layers, self.layers_normed, hidden)


def read_dataset(path: Path) -> list[Labelled]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        data = json.loads(line)
        try:
            rows.append(
                Labelled(
                    id=str(data.get("id", number)),
                    instruction=data["instruction"],
                    response=data["response"],
                    reference=data.get("reference_answer", data.get("reference")),
                    rubric=data.get("rubric"),
                    human=float(data["human_score"]),
                    fields=data,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: needs instruction, response and human_score ({exc})") from exc
    return rows


def split(items: Sequence[Labelled], fit_fraction: float, seed: int) -> tuple[list[Labelled], list[Labelled]]:
    """A seeded, disjoint (fit, eval) split."""
    order = list(items)
    random.Random(seed).shuffle(order)
    cut = round(len(order) * fit_fraction)
    return order[:cut], order[cut:]


def _log_rows(layers: Sequence[dict[str, float]], labels: Sequence[str]) -> tuple[tuple[float, ...], ...]:
    # Per-layer log-probabilities; per-layer constants cancel in every softmax downstream.
    return tuple(tuple(math.log(max(row[label], 1e-300)) for label in labels) for row in layers)


async def collect_scores(
    items: Sequence[Labelled],
    scorer: Scorer,
    chunk: int = 8,
    progress: bool = True,
    hidden_layers: Sequence[int] | None = None,
    layers: bool = True,
    template: str = "default",
) -> list[Scored]:
    """Score every item under ``template``: final log-probabilities, per-layer label scores
    in both layer-norm variants (unless ``layers`` is off), and the hidden rows of
    ``hidden_layers``."""
    from tqdm import tqdm

    scored: list[Scored] = []
    bar = tqdm(total=len(items), disable=not progress, desc="scoring", unit="item")
    groups: dict[str, list[Labelled]] = {}
    for item in items:
        groups.setdefault(json.dumps(item.rubric, sort_keys=True), []).append(item)
    for rubric_key, group in groups.items():
        rubric = json.loads(rubric_key)
        for start in range(0, len(group), chunk):
            part = group[start : start + chunk]
            payload = {
                "items": [
                    {"id": it.id, "instruction": it.instruction, "response": it.response}
                    | ({"reference_answer": it.reference} if it.reference is not None else {})
                    for it in part
                ],
                "return_layers": layers,
                "return_logprobs": True,
                "template": template,
            }
            if rubric is not None:
                payload["rubric"] = rubric
            hidden = {"hidden_layers": list(hidden_layers)} if hidden_layers else {}
            requests = [scorer(score_request({**payload, "layer_norm": False, **hidden}))]
            if layers:
                requests.append(scorer(score_request({**payload, "layer_norm": True})))
            answers = await asyncio.gather(*requests)
            raw, normed = answers[0], answers[-1]
            for it, a, b in zip(part, raw.results, normed.results, strict=True):
                scored.append(_scored(it, a, b, raw.prompt_version, hidden_layers))
            bar.update(len(part))
    bar.close()
    by_id = {s.item.id: s for s in scored}
    return [by_id[it.id] for it in items]


def _scored(
    item: Labelled, raw: ItemScore, normed: ItemScore, version: str, hidden_layers: Sequence[int] | None
) -> Scored:
    assert raw.logprobs is not None
    labels = list(raw.logprobs)
    hidden = None
    if hidden_layers:
        assert raw.hidden is not None
        hidden = tuple(tuple(raw.hidden[str(layer)]) for layer in hidden_layers)
    return Scored(
        item=item,
        final_logprobs=tuple(raw.logprobs[label] for label in labels),
        layers=_log_rows(raw.layers or [], labels),
        layers_normed=_log_rows(normed.layers or [], labels),
        prompt_version=version,
        hidden=hidden,
        hidden_layers=tuple(hidden_layers or ()),
    )


def correlations(pred: Sequence[float], human: Sequence[float]) -> dict[str, float]:
    from scipy import stats

    if len(set(pred)) < 2:
        nan = float("nan")
        return {"spearman": nan, "pearson": nan, "kendall": nan, "mae": _mae(pred, human)}
    return {
        "spearman": float(stats.spearmanr(pred, human).statistic),
        "pearson": float(stats.pearsonr(pred, human).statistic),
        "kendall": float(stats.kendalltau(pred, human).statistic),
        "mae": _mae(pred, human),
    }


def _mae(pred: Sequence[float], human: Sequence[float]) -> float:
    return sum(abs(p - h) for p, h in zip(pred, human, strict=True)) / len(pred)


def calibration_error(
    dists: Sequence[scoring.Distribution], human: Sequence[float], values: Sequence[float], bins: int = 10
) -> float:
    """Expected calibration error of the mode: |accuracy - confidence| over confidence bins,
    where the mode is right when it is the label nearest the human score."""
    total = 0.0
    buckets: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for dist, target in zip(dists, human, strict=True):
        top = max(dist.probs)
        nearest = min(range(len(values)), key=lambda i: abs(values[i] - target))
        correct = 1.0 if dist.probs.index(top) == nearest else 0.0
        buckets[min(bins - 1, int(top * bins))].append((top, correct))
    for bucket in buckets:
        if bucket:
            confidence = sum(c for c, _ in bucket) / len(bucket)
            accuracy = sum(a for _, a in bucket) / len(bucket)
            total += len(bucket) / len(dists) * abs(accuracy - confidence)
    return total


def method_distributions(
    scored: Sequence[Scored], labels: Sequence[str], values: Sequence[float], weights: LayerWeights | None
) -> dict[str, list[scoring.Distribution]]:
    """Every method's label distribution for every item, by the method table: ``final``,
    ``lager`` in both layer-norm variants and, given weights, ``lager_weighted`` (in the
    variant they were fitted on)."""
    readouts = [s.readout for s in scored]
    out = {"final": [METHODS["final"].distribution(r, labels, values) for r in readouts]}
    for norm_name, normed in (("", False), (" (layer_norm)", True)):
        out["lager" + norm_name] = [
            METHODS["lager"].distribution(r, labels, values, layer_norm=normed) for r in readouts
        ]
    if weights is not None:
        fitted = Fitted(layer_weights=weights)
        out["lager_weighted"] = [METHODS["lager_weighted"].distribution(r, labels, values, fitted) for r in readouts]
    return out


def method_scores(
    dists: dict[str, list[scoring.Distribution]], labels: Sequence[str], values: Sequence[float]
) -> dict[str, list[float]]:
    """Every method's score per item, from ``method_distributions``: the final mode's value,
    then each expected score."""
    out = {"final (argmax)": [values[labels.index(d.mode)] for d in dists["final"]]}
    out.update({_row_name(name): [d.expected_score or 0.0 for d in ds] for name, ds in dists.items()})
    return out


def _row_name(method: str) -> str:
    return "final (expected)" if method == "final" else method


def method_rows(
    scored: Sequence[Scored],
    labels: Sequence[str],
    values: Sequence[float],
    weights: LayerWeights | None,
    extra: dict[str, list[scoring.Distribution]] | None = None,
    samples: int = intervals.SAMPLES,
) -> dict[str, dict[str, Any]]:
    """Agreement with humans of every method on ``scored``, each figure with its bootstrap
    95% interval (``<figure>_ci``). ``extra``: more methods' distributions (calibrated, probe)."""
    human = [s.item.human for s in scored]
    dists = method_distributions(scored, labels, values, weights) | (extra or {})
    preds = method_scores(dists, labels, values)
    by_row = {_row_name(name): ds for name, ds in dists.items()} | {"final (argmax)": dists["final"]}
    return {name: figures(p, human, by_row[name], values, samples) for name, p in preds.items()}


def figures(
    preds: Sequence[float],
    human: Sequence[float],
    dists: Sequence[scoring.Distribution],
    values: Sequence[float],
    samples: int = intervals.SAMPLES,
) -> dict[str, Any]:
    """Spearman, Pearson, Kendall, MAE and ECE, each with its bootstrap 95% interval."""
    pred_a, human_a = np.asarray(preds, dtype=float), np.asarray(human, dtype=float)

    def on(idx: np.ndarray) -> dict[str, float]:
        subset = [dists[i] for i in idx]
        picked = human_a[idx]
        return {**correlations(list(pred_a[idx]), list(picked)), "ece": calibration_error(subset, list(picked), values)}

    return intervals.with_intervals(on, len(preds), samples)


def layer_scores(
    scored: Sequence[Scored], labels: Sequence[str], values: Sequence[float], normed: bool
) -> list[list[float]]:
    """The expected score of every item under every layer alone: ``[layer][item]``."""
    count = len(scored[0].layers)
    return [
        [
            scoring.distribution(labels, (s.layers_normed if normed else s.layers)[layer], values).expected_score or 0.0
            for s in scored
        ]
        for layer in range(count)
    ]


def per_layer_spearman(
    scored: Sequence[Scored], labels: Sequence[str], values: Sequence[float], normed: bool
) -> list[float]:
    human = [s.item.human for s in scored]
    return [correlations(preds, human)["spearman"] for preds in layer_scores(scored, labels, values, normed)]


def plot_layers(
    curves: dict[str, list[float]],
    reference: dict[str, float],
    path: Path,
    title: str,
    ylabel: str = "Spearman with human scores",
    reference_ci: dict[str, Sequence[float]] | None = None,
) -> None:
    """Curves by layer, and each ``reference`` figure as a line, with its 95% interval from
    ``reference_ci`` as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, curve in curves.items():
        ax.plot(range(len(curve)), curve, marker="o", markersize=3, label=name)
    styles = iter(["--", ":", "-."])
    for name, value in reference.items():
        ax.axhline(value, linestyle=next(styles, "--"), linewidth=1, color="grey", label=name)
        low, high = (reference_ci or {}).get(name, (math.nan, math.nan))
        if math.isfinite(low) and math.isfinite(high):
            ax.axhspan(low, high, color="grey", alpha=0.12, linewidth=0)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""``/v1/score``: items against a rubric, several criteria, or raw prompts against labels
-> label distributions, calibrated scores and review flags."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from judge_client.score_requests import RawItem, RawScoreRequest, StructuredItem, StructuredScoreRequest
from judge_client.score_results import CalibratedScore, CriterionScore, ItemScore, ScoreResponse

from service.core.tasks import CritiqueOutcome, LabelScores, ScoringTask
from service.methods import review, scoring
from service.methods.readout import METHODS, Readout
from service.requests.presets import PRESETS, Preset
from service.requests.prompts import DEFAULT_RUBRIC, Prompts, Rubric, combined_version
from service.requests.readouts import reads_per_layer
from service.serving.runtime import Runtime

ScoreRequest = RawScoreRequest | StructuredScoreRequest
Disconnected = Callable[[], Awaitable[None]] | None


def _preset(request: ScoreRequest) -> Preset | None:
    """The published judge format a structured request's template names, if any."""
    return PRESETS.get(request.template) if isinstance(request, StructuredScoreRequest) else None


def critique_spec(request: ScoreRequest, max_tokens: int | None = None) -> tuple[int, str] | None:
    """Critique mode's (max_tokens, marker): the request's own, else its preset's default,
    within the server's ``max_tokens`` (a preset judge writes first unless the request sets
    ``critique`` to null)."""
    if request.critique is not None:
        return request.critique.max_tokens, request.critique.marker
    preset = _preset(request)
    if preset is not None and "critique" not in request.model_fields_set:
        return preset.critique(max_tokens)
    return None


def _marker(request: ScoreRequest) -> str | None:
    """The marker after which the labels are read in critique mode; None outside it."""
    spec = critique_spec(request)
    return spec[1] if spec is not None else None


def read_labels(request: ScoreRequest) -> list[str]:
    """The text each label is read as: the label itself, after the preset's label prefix
    (a Prometheus judge writes "[RESULT] 4", so "4" is read as " 4")."""
    preset = _preset(request)
    prefix = preset.label_prefix if preset is not None else ""
    return [prefix + label for label in request.label_set]


@dataclass(frozen=True)
class Criterion:
    """One prompt per item: a rubric (or a raw prompt's labels) and its version."""

    name: str | None
    rubric: Rubric | None
    weight: float
    prompt_version: str


@dataclass(frozen=True)
class Reading:
    """One criterion of one item, read out: the method's distribution and what follows."""

    dist: scoring.Distribution
    label_mass: float
    prompt_tokens: int
    calibrated: scoring.Distribution | None
    calibration_note: str | None
    reasons: tuple[str, ...]
    critique: CritiqueOutcome | None = None

    def critique_fields(self) -> dict[str, Any]:
        """The critique-mode fields of a result (all None outside critique mode)."""
        c = self.critique
        return {
            "critique": c.text if c else None,
            "marker_found": c.marker_found if c else None,
            "critique_tokens": c.tokens if c else None,
        }


class ScoreService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def score(
        self,
        request: ScoreRequest,
        timeout_s: float | None,
        disconnected: Disconnected,
        arrived: float | None = None,
    ) -> ScoreResponse:
        _, limits = self.runtime.require_ready()
        deadline = limits.work.deadline(timeout_s, arrived)
        criteria = await asyncio.to_thread(self.criteria, request)
        tasks = await asyncio.to_thread(self.tasks, request, criteria)
        results = await self.runtime.run(tasks, deadline, disconnected)
        items: Sequence[RawItem | StructuredItem] = request.items
        per_item = len(criteria)
        scores = [
            self._item_score(
                item.id,
                request,
                criteria,
                tasks[i * per_item : (i + 1) * per_item],
                results[i * per_item : (i + 1) * per_item],
            )
            for i, item in enumerate(items)
        ]
        metrics = self.runtime.metrics
        metrics.answered("score", request.method, len(scores), len(tasks), sum(t.length for t in tasks))
        for item_score in scores:
            if item_score.expected_score is not None:
                metrics.expected_score.observe(item_score.expected_score)
        version = (
            criteria[0].prompt_version
            if per_item == 1
            else combined_version({str(c.name): c.prompt_version for c in criteria})
        )
        return ScoreResponse(
            model=self.runtime.model_name, method=request.method, prompt_version=version, results=scores
        )

    def criteria(self, request: ScoreRequest) -> list[Criterion]:
        """The prompts each item gets: one per criterion, or one for a rubric or raw prompt."""
        prompts, limits = self.runtime.require_ready()
        if isinstance(request, RawScoreRequest):
            return [Criterion(None, None, 1.0, prompts.raw_version(_marker(request)))]
        if request.rubrics is not None:
            limits.caps.check_criteria(len(request.rubrics))
            out = []
            for name, spec in request.rubrics.items():
                rubric = Rubric(spec.criteria, tuple(spec.score_descriptions.items()))
                out.append(Criterion(name, rubric, spec.weight, self._version(prompts, rubric, request)))
            return out
        preset = PRESETS.get(request.template)
        rubric = preset.rubric if preset is not None else DEFAULT_RUBRIC
        if request.rubric is not None:
            rubric = Rubric(request.rubric.criteria, tuple(request.rubric.score_descriptions.items()))
        return [Criterion(None, rubric, 1.0, self._version(prompts, rubric, request))]

    def _version(self, prompts: Prompts, rubric: Rubric, request: StructuredScoreRequest) -> str:
        limits = self.runtime.require_ready()[1]
        kwargs = limits.caps.chat_template_kwargs(request.chat_template_kwargs)
        return prompts.score_version(rubric, request.template, kwargs, _marker(request))

    def tasks(self, request: ScoreRequest, criteria: Sequence[Criterion] | None = None) -> list[ScoringTask]:
        """Render and tokenise every prompt, item-major (item 0's criteria first); every
        limit is checked before anything is queued."""
        prompts, limits = self.runtime.require_ready()
        criteria = criteria if criteria is not None else self.criteria(request)
        spec = critique_spec(request, limits.caps.max_critique_tokens)
        # Checked first, from the request alone: a critique with a per-layer readout is refused
        # as such, whether or not this server has layer weights or a probe.
        per_layer = reads_per_layer(request.method, request.return_layers, request.hidden_layers)
        critique = limits.critique(*spec, per_layer) if spec is not None else None
        want_layers = limits.readouts.wants_layers(request.method, request.return_layers)
        hidden = limits.readouts.hidden_layers(request.method, request.hidden_layers)
        for criterion in criteria:
            limits.readouts.check_fitted_for(
                request.method, self.runtime.model_name, request.label_set, criterion.prompt_version
            )
        limits.caps.check_count(len(request.items), "items")
        limits.work.check_prompts(len(request.items) * len(criteria))
        trie = limits.tokens.label_trie(read_labels(request), want_layers)
        tasks = []
        items: Sequence[RawItem | StructuredItem] = request.items
        chat_kwargs = {}
        if isinstance(request, StructuredScoreRequest):
            chat_kwargs = limits.caps.chat_template_kwargs(request.chat_template_kwargs)
        for index, item in enumerate(items):
            for criterion in criteria:
                if isinstance(item, RawItem):
                    text = item.prompt
                else:
                    assert isinstance(request, StructuredScoreRequest) and criterion.rubric is not None
                    text = prompts.score(
                        item.instruction,
                        item.response,
                        item.reference_answer,
                        criterion.rubric,
                        request.template,
                        chat_kwargs,
                        writes_first=critique is not None,
                    )
                token_ids = limits.tokens.encode(text, index, item.id, critique)
                tasks.append(ScoringTask.reading(token_ids, trie, want_layers, hidden, critique))
        return tasks

    def _layer_norm(self, request: ScoreRequest) -> bool:
        """Whether LAGER reads the layers through the final norm: the request's choice, else the server's."""
        return self.runtime.settings.lager_layer_norm if request.layer_norm is None else request.layer_norm

    def _readout(self, request: ScoreRequest, criterion: Criterion, task: ScoringTask, result: LabelScores) -> Reading:
        runtime = self.runtime
        assets = runtime.assets
        labels = request.label_set
        values = scoring.label_values(labels, request.label_values)
        layer_norm = self._layer_norm(request)
        readout = Readout.of(result, task.hidden_layers)
        dist = METHODS[request.method].distribution(readout, labels, values, assets.fitted, layer_norm)
        final_mass = scoring.from_logprobs(labels, result.logprobs, values).label_mass
        calibrated = None
        note: str | None = "the server has no calibration (JUDGE_CALIBRATION_FILE)"
        if assets.calibration is not None:
            note = assets.calibration.mismatch(runtime.model_name, labels, request.method, criterion.prompt_version)
            if note is None:
                calibrated = scoring.from_probs(labels, assets.calibration.apply(dist.probs), values)
        reasons = review.reasons(dist.confidence, final_mass, calibrated.probs if calibrated else None, assets.review)
        return Reading(dist, final_mass, task.length, calibrated, note, reasons, result.critique)

    def _item_score(
        self,
        item_id: str,
        request: ScoreRequest,
        criteria: Sequence[Criterion],
        tasks: Sequence[ScoringTask],
        results: Sequence[LabelScores],
    ) -> ItemScore:
        readouts = [self._readout(request, c, t, r) for c, t, r in zip(criteria, tasks, results, strict=True)]
        if criteria[0].name is not None:
            return self._aggregate(item_id, request, criteria, readouts)
        (readout,), (task,), (result,) = readouts, tasks, results
        labels = request.label_set
        layer_norm = self._layer_norm(request)
        layers = Readout.of(result, task.hidden_layers).layer_logits(layer_norm)
        per_layer = None
        if request.return_layers and layers is not None:
            per_layer = [dict(zip(labels, scoring.softmax(row), strict=True)) for row in layers]
        hidden = None
        if request.hidden_layers and result.hidden is not None:
            rows = dict(zip(task.hidden_layers, result.hidden, strict=True))
            hidden = {str(layer): list(rows[layer]) for layer in request.hidden_layers}
        dist = readout.dist
        return ItemScore(
            id=item_id,
            distribution=dict(zip(labels, dist.probs, strict=True)),
            expected_score=dist.expected_score,
            mode=dist.mode,
            std=dist.std,
            confidence=dist.confidence,
            label_mass=readout.label_mass,
            prompt_tokens=readout.prompt_tokens,
            logprobs=dict(zip(labels, result.logprobs, strict=True)) if request.return_logprobs else None,
            layers=per_layer,
            hidden=hidden,
            calibrated=_calibrated(readout.calibrated),
            calibration_note=readout.calibration_note,
            needs_review=bool(readout.reasons),
            review_reasons=list(readout.reasons),
            criteria=None,
            **readout.critique_fields(),
        )

    def _aggregate(
        self, item_id: str, request: ScoreRequest, criteria: Sequence[Criterion], readouts: Sequence[Reading]
    ) -> ItemScore:
        """Several criteria: each as a one-rubric request would return it, and their
        weighted mixture at the top level."""
        labels = request.label_set
        values = scoring.label_values(labels, request.label_values)
        parts = [
            scoring.Distribution(
                r.dist.labels,
                r.dist.probs,
                r.label_mass,
                r.dist.expected_score,
                r.dist.std,
                r.dist.confidence,
                r.dist.mode,
            )
            for r in readouts
        ]
        mixed = scoring.mixture(labels, parts, [c.weight for c in criteria], values)
        reasons = [f"{c.name}:{reason}" for c, r in zip(criteria, readouts, strict=True) for reason in r.reasons]
        return ItemScore(
            id=item_id,
            distribution=dict(zip(labels, mixed.probs, strict=True)),
            expected_score=mixed.expected_score,
            mode=mixed.mode,
            std=mixed.std,
            confidence=mixed.confidence,
            label_mass=mixed.label_mass,
            prompt_tokens=sum(r.prompt_tokens for r in readouts),
            logprobs=None,
            layers=None,
            hidden=None,
            calibrated=None,
            calibration_note="with rubrics, each criterion is calibrated on its own (see criteria)",
            needs_review=bool(reasons),
            review_reasons=reasons,
            criteria={
                str(c.name): CriterionScore(
                    distribution=dict(zip(labels, r.dist.probs, strict=True)),
                    expected_score=r.dist.expected_score,
                    mode=r.dist.mode,
                    std=r.dist.std,
                    confidence=r.dist.confidence,
                    label_mass=r.label_mass,
                    prompt_tokens=r.prompt_tokens,
                    prompt_version=c.prompt_version,
                    calibrated=_calibrated(r.calibrated),
                    calibration_note=r.calibration_note,
                    needs_review=bool(r.reasons),
                    review_reasons=list(r.reasons),
                    **r.critique_fields(),
                )
                for c, r in zip(criteria, readouts, strict=True)
            },
        )


def _calibrated(dist: scoring.Distribution | None) -> CalibratedScore | None:
    if dist is None:
        return None
    return CalibratedScore(
        distribution=dict(zip(dist.labels, dist.probs, strict=True)),
        expected_score=dist.expected_score,
        mode=dist.mode,
        std=dist.std,
        confidence=dist.confidence,
    )

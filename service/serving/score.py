"""``/v1/score``: items against a rubric, several criteria, or raw prompts against labels
-> label distributions, calibrated scores and review flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from judge_client.score_requests import RawItem, StructuredItem
from judge_client.score_results import CalibratedScore, CriterionScore, ItemScore, ScoreResponse

from service.core.tasks import CritiqueOutcome, LabelScores, ScoringTask
from service.methods import review, scoring
from service.methods.readout import METHODS, Readout
from service.requests.prepared import Prepared
from service.requests.score import Criterion, ScoreRequest, prepare_score, prompt_version
from service.serving.assets import ReadoutAssets
from service.serving.endpoint import Endpoint, Judge, Tally


class ScoreService(Endpoint[ScoreRequest, list[Criterion], ScoreResponse]):
    name = "score"

    def prepare(self, request: ScoreRequest, judge: Judge) -> Prepared[list[Criterion]]:
        return prepare_score(request, judge.prompts, judge.limits, judge.model)

    def respond(
        self, request: ScoreRequest, judge: Judge, prepared: Prepared[list[Criterion]], results: list[LabelScores]
    ) -> ScoreResponse:
        # LAGER reads the layers through the final norm as the request says, else as the server does.
        layer_norm = self.runtime.settings.lager_layer_norm if request.layer_norm is None else request.layer_norm
        answer = ScoreAnswer(request, judge.model, self.runtime.assets, layer_norm)
        criteria, tasks = prepared.context, prepared.tasks
        items: Sequence[RawItem | StructuredItem] = request.items
        n = len(criteria)
        scores = [
            answer.item_score(item.id, criteria, tasks[i * n : (i + 1) * n], results[i * n : (i + 1) * n])
            for i, item in enumerate(items)
        ]
        return ScoreResponse(
            model=judge.model, method=request.method, prompt_version=prompt_version(criteria), results=scores
        )

    def tally(self, request: ScoreRequest, response: ScoreResponse) -> Tally:
        scores = [r.expected_score for r in response.results if r.expected_score is not None]
        return Tally(request.method, len(response.results), scores)


class DistributionFields(TypedDict):
    """What every scored distribution shows on the wire."""

    distribution: dict[str, float]
    expected_score: float | None
    mode: str
    std: float | None
    confidence: float


def distribution_fields(dist: scoring.Distribution) -> DistributionFields:
    """A distribution's wire fields. Where the wire type has ``label_mass``, the caller gives
    it: the final distribution's, whatever method formed ``dist``."""
    return DistributionFields(
        distribution=dict(zip(dist.labels, dist.probs, strict=True)),
        expected_score=dist.expected_score,
        mode=dist.mode,
        std=dist.std,
        confidence=dist.confidence,
    )


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


@dataclass(frozen=True)
class ScoreAnswer:
    """One score request's answer from its results: each criterion's distribution by the
    request's method, its calibration and review flags; ``layer_norm``: whether LAGER reads
    the final-normed layers."""

    request: ScoreRequest
    model: str
    assets: ReadoutAssets
    layer_norm: bool

    def reading(self, criterion: Criterion, task: ScoringTask, result: LabelScores) -> Reading:
        request, assets = self.request, self.assets
        labels = request.label_set
        values = scoring.label_values(labels, request.label_values)
        readout = Readout.of(result, task.hidden_layers)
        dist = METHODS[request.method].distribution(readout, labels, values, assets.fitted, self.layer_norm)
        final_mass = scoring.from_logprobs(labels, result.logprobs, values).label_mass
        calibrated = None
        note: str | None = "the server has no calibration (JUDGE_CALIBRATION_FILE)"
        if assets.calibration is not None:
            note = assets.calibration.mismatch(self.model, labels, request.method, criterion.prompt_version)
            if note is None:
                calibrated = scoring.from_probs(labels, assets.calibration.apply(dist.probs), values)
        reasons = review.reasons(dist.confidence, final_mass, calibrated.probs if calibrated else None, assets.review)
        return Reading(dist, final_mass, task.length, calibrated, note, reasons, result.critique)

    def item_score(
        self,
        item_id: str,
        criteria: Sequence[Criterion],
        tasks: Sequence[ScoringTask],
        results: Sequence[LabelScores],
    ) -> ItemScore:
        readings = [self.reading(c, t, r) for c, t, r in zip(criteria, tasks, results, strict=True)]
        if criteria[0].name is not None:
            return self._aggregate(item_id, criteria, readings)
        request = self.request
        (reading,), (task,), (result,) = readings, tasks, results
        labels = request.label_set
        layers = Readout.of(result, task.hidden_layers).layer_logits(self.layer_norm)
        per_layer = None
        if request.return_layers and layers is not None:
            per_layer = [dict(zip(labels, scoring.softmax(row), strict=True)) for row in layers]
        hidden = None
        if request.hidden_layers and result.hidden is not None:
            rows = dict(zip(task.hidden_layers, result.hidden, strict=True))
            hidden = {str(layer): list(rows[layer]) for layer in request.hidden_layers}
        return ItemScore(
            id=item_id,
            **distribution_fields(reading.dist),
            label_mass=reading.label_mass,
            prompt_tokens=reading.prompt_tokens,
            logprobs=dict(zip(labels, result.logprobs, strict=True)) if request.return_logprobs else None,
            layers=per_layer,
            hidden=hidden,
            calibrated=_calibrated(reading.calibrated),
            calibration_note=reading.calibration_note,
            needs_review=bool(reading.reasons),
            review_reasons=list(reading.reasons),
            criteria=None,
            **reading.critique_fields(),
        )

    def _aggregate(self, item_id: str, criteria: Sequence[Criterion], readings: Sequence[Reading]) -> ItemScore:
        """Several criteria: each as a one-rubric request would return it, and their
        weighted mixture at the top level."""
        labels = self.request.label_set
        values = scoring.label_values(labels, self.request.label_values)
        # Each part carries the final distribution's label mass, as each criterion shows it.
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
            for r in readings
        ]
        mixed = scoring.mixture(labels, parts, [c.weight for c in criteria], values)
        reasons = [f"{c.name}:{reason}" for c, r in zip(criteria, readings, strict=True) for reason in r.reasons]
        return ItemScore(
            id=item_id,
            **distribution_fields(mixed),
            label_mass=mixed.label_mass,
            prompt_tokens=sum(r.prompt_tokens for r in readings),
            logprobs=None,
            layers=None,
            hidden=None,
            calibrated=None,
            calibration_note="with rubrics, each criterion is calibrated on its own (see criteria)",
            needs_review=bool(reasons),
            review_reasons=reasons,
            criteria={
                str(c.name): CriterionScore(
                    **distribution_fields(r.dist),
                    label_mass=r.label_mass,
                    prompt_tokens=r.prompt_tokens,
                    prompt_version=c.prompt_version,
                    calibrated=_calibrated(r.calibrated),
                    calibration_note=r.calibration_note,
                    needs_review=bool(r.reasons),
                    review_reasons=list(r.reasons),
                    **r.critique_fields(),
                )
                for c, r in zip(criteria, readings, strict=True)
            },
        )


def _calibrated(dist: scoring.Distribution | None) -> CalibratedScore | None:
    return CalibratedScore(**distribution_fields(dist)) if dist is not None else None

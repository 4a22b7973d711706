"""A ``/v1/score`` request prepared: its criteria (one per rubric, or the one rubric or raw
prompt), how its labels are read (a preset's label prefix, critique mode's marker), and one
task per item and criterion, every limit checked before anything is queued."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from judge_client.score_requests import RawItem, RawScoreRequest, StructuredItem, StructuredScoreRequest

from service.core.tasks import ScoringTask
from service.requests.limits import Limits
from service.requests.prepared import Prepared
from service.requests.presets import PRESETS, Preset
from service.requests.prompts import DEFAULT_RUBRIC, Prompts, Rubric, combined_version
from service.requests.readouts import reads_per_layer

ScoreRequest = RawScoreRequest | StructuredScoreRequest


@dataclass(frozen=True)
class Criterion:
    """One prompt per item: a rubric (or a raw prompt's labels) and its version."""

    name: str | None
    rubric: Rubric | None
    weight: float
    prompt_version: str


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


def prepare_score(request: ScoreRequest, prompts: Prompts, limits: Limits, model: str) -> Prepared[list[Criterion]]:
    """The request's tasks, item-major (item 0's criteria first), and its criteria."""
    criteria = _criteria(request, prompts, limits)
    return Prepared(_tasks(request, criteria, prompts, limits, model), criteria)


def prompt_version(criteria: Sequence[Criterion]) -> str:
    """The answer's prompt version: its one criterion's, else every criterion's combined."""
    if len(criteria) == 1:
        return criteria[0].prompt_version
    return combined_version({str(c.name): c.prompt_version for c in criteria})


def _criteria(request: ScoreRequest, prompts: Prompts, limits: Limits) -> list[Criterion]:
    """The prompts each item gets: one per criterion, or one for a rubric or raw prompt."""
    if isinstance(request, RawScoreRequest):
        return [Criterion(None, None, 1.0, prompts.raw_version(_marker(request)))]
    if request.rubrics is not None:
        limits.caps.check_criteria(len(request.rubrics))
        out = []
        for name, spec in request.rubrics.items():
            rubric = Rubric(spec.criteria, tuple(spec.score_descriptions.items()))
            out.append(Criterion(name, rubric, spec.weight, _version(request, rubric, prompts, limits)))
        return out
    preset = PRESETS.get(request.template)
    rubric = preset.rubric if preset is not None else DEFAULT_RUBRIC
    if request.rubric is not None:
        rubric = Rubric(request.rubric.criteria, tuple(request.rubric.score_descriptions.items()))
    return [Criterion(None, rubric, 1.0, _version(request, rubric, prompts, limits))]


def _version(request: StructuredScoreRequest, rubric: Rubric, prompts: Prompts, limits: Limits) -> str:
    kwargs = limits.caps.chat_template_kwargs(request.chat_template_kwargs)
    return prompts.score_version(rubric, request.template, kwargs, _marker(request))


def _tasks(
    request: ScoreRequest, criteria: Sequence[Criterion], prompts: Prompts, limits: Limits, model: str
) -> list[ScoringTask]:
    """Render and tokenise every prompt, item-major; every limit is checked first."""
    spec = critique_spec(request, limits.caps.max_critique_tokens)
    # Checked first, from the request alone: a critique with a per-layer readout is refused
    # as such, whether or not this server has layer weights or a probe.
    per_layer = reads_per_layer(request.method, request.return_layers, request.hidden_layers)
    critique = limits.critique(*spec, per_layer) if spec is not None else None
    want_layers = limits.readouts.wants_layers(request.method, request.return_layers)
    hidden = limits.readouts.hidden_layers(request.method, request.hidden_layers)
    for criterion in criteria:
        limits.readouts.check_fitted_for(request.method, model, request.label_set, criterion.prompt_version)
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

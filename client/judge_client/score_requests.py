"""The /v1/score request: raw prompts or structured items, the rubric or criteria they are
graded against, the scoring options, and ``score_request``, which tells the two apart."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator

from judge_client.fields import (
    CHAT_TEMPLATE_KWARGS_DESCRIPTION,
    DEFAULT_LABELS,
    MAX_CRITERIA,
    MAX_HIDDEN_LAYERS,
    MAX_LABELS,
    MAX_LAYER_INDEX,
    MT_BENCH_LABELS,
    ChatTemplateKwargs,
    CriterionName,
    CritiqueSpec,
    FiniteFloat,
    ItemId,
    Label,
    Method,
    NonEmptyText,
    Template,
    Text,
    Timeout,
    _integral,
    _Request,
)


class RawItem(_Request):
    """A prompt used verbatim: no chat template, no special tokens."""

    id: ItemId
    prompt: NonEmptyText


class StructuredItem(_Request):
    """A response to grade, rendered into the judge prompt with the rubric."""

    id: ItemId
    instruction: Text
    response: Text
    reference_answer: Text | None = None


class RubricSpec(_Request):
    criteria: NonEmptyText
    score_descriptions: dict[Label, Text] = Field(
        ...,
        min_length=2,
        max_length=MAX_LABELS,
        description="Label -> description, in score order.",
    )


class CriterionSpec(RubricSpec):
    """One criterion of a several-criteria request: a rubric and its weight in the aggregate."""

    weight: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False, description="Weight in the top-level aggregate.")


class _ScoreOptions(_Request):
    label_values: dict[Label, FiniteFloat] | None = Field(
        None, description="Numeric value of each label; numeric labels default to their number."
    )
    method: Method = "final"
    return_layers: bool = Field(False, description="Add per-layer label distributions.")
    return_logprobs: bool = Field(False, description="Add each label's raw log-probability.")
    hidden_layers: list[Annotated[int, Field(ge=0, le=MAX_LAYER_INDEX), BeforeValidator(_integral)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_HIDDEN_LAYERS,
        description="Add the scoring-position hidden state of these entries (0 = embeddings, last = final output).",
        json_schema_extra={"uniqueItems": True},
    )
    layer_norm: bool | None = Field(
        None, description="LAGER: apply the final norm to each layer first; default from the server."
    )
    timeout_s: Timeout | None = None
    critique: CritiqueSpec | None = Field(
        None,
        description=(
            "Generate a critique first and read the labels after it (method 'final' only). The prometheus and "
            "mt-bench templates write one by default; null turns that off."
        ),
    )

    @property
    def label_set(self) -> tuple[str, ...]:
        """The labels this request reads, in score order."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _values_name_labels(self) -> _ScoreOptions:
        if self.hidden_layers is not None and len(set(self.hidden_layers)) != len(self.hidden_layers):
            raise ValueError("hidden_layers must be unique")
        if self.label_values is not None:
            unknown = sorted(set(self.label_values) - set(self.label_set))
            if unknown:
                raise ValueError(f"label_values names labels the request does not read: {unknown}")
        return self


class RawScoreRequest(_ScoreOptions):
    """Raw prompts with their own labels."""

    items: list[RawItem] = Field(..., min_length=1)
    labels: list[Label] | None = Field(
        None,
        min_length=2,
        max_length=MAX_LABELS,
        description="The labels to read, in score order; default ['1','2','3','4','5'].",
        json_schema_extra={"uniqueItems": True},
    )

    @model_validator(mode="after")
    def _unique_labels(self) -> RawScoreRequest:
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self

    @property
    def label_set(self) -> tuple[str, ...]:
        return tuple(self.labels) if self.labels is not None else DEFAULT_LABELS


class StructuredScoreRequest(_ScoreOptions):
    """Structured items graded against one rubric (the built-in 1-5 one by default), or
    against several criteria at once (``rubrics``), never both."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"not": {"required": ["rubric", "rubrics"]}}
    )

    items: list[StructuredItem] = Field(..., min_length=1)
    rubric: RubricSpec | None = Field(None, description="A general-quality 1-5 rubric by default.")
    rubrics: dict[CriterionName, CriterionSpec] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CRITERIA,
        description="Several criteria, each a rubric with a weight, instead of `rubric`; all share one label set.",
    )
    chat_template_kwargs: ChatTemplateKwargs | None = Field(
        None, max_length=16, description=CHAT_TEMPLATE_KWARGS_DESCRIPTION
    )
    template: Template = Field(
        "default",
        description=(
            "The judge prompt: 'default' (response last), 'rubric_last' (rubric last), or a published judge "
            "format: 'prometheus' (Prometheus 2 absolute grading, '[RESULT] n', 1-5) or 'mt-bench' "
            "(MT-Bench single-answer grading, 'Rating: [[n]]', 1-10), which write a critique first."
        ),
    )

    @model_validator(mode="after")
    def _one_rubric_field(self) -> StructuredScoreRequest:
        if {"rubric", "rubrics"} <= self.model_fields_set:
            raise ValueError("give either rubric or rubrics, not both")
        if self.rubrics is not None:
            label_sets = {tuple(spec.score_descriptions) for spec in self.rubrics.values()}
            if len(label_sets) > 1:
                raise ValueError("every rubric in rubrics must have the same labels in the same order")
        return self

    @property
    def label_set(self) -> tuple[str, ...]:
        if self.rubrics is not None:
            return tuple(next(iter(self.rubrics.values())).score_descriptions)
        if self.rubric is not None:
            return tuple(self.rubric.score_descriptions)
        return MT_BENCH_LABELS if self.template == "mt-bench" else DEFAULT_LABELS


def _score_request_kind(data: Any) -> str | None:
    """'raw' or 'structured' from the items; None for a mix, which no schema branch accepts."""
    if isinstance(data, BaseModel):
        return "raw" if isinstance(data, RawScoreRequest) else "structured"
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return "structured"
    kinds = {"raw" if "prompt" in item else "structured" for item in items if isinstance(item, dict)}
    if len(kinds) > 1:
        return None
    return kinds.pop() if kinds else "structured"


ScoreRequest = Annotated[
    Union[Annotated[RawScoreRequest, Tag("raw")], Annotated[StructuredScoreRequest, Tag("structured")]],  # noqa: UP007
    Discriminator(
        _score_request_kind,
        custom_error_type="mixed_items",
        custom_error_message=(
            "items must be all raw prompts ({id, prompt}) or all structured ({id, instruction, response}), not a mix"
        ),
    ),
]
SCORE_REQUEST: TypeAdapter[RawScoreRequest | StructuredScoreRequest] = TypeAdapter(ScoreRequest)


def score_request(data: Any) -> RawScoreRequest | StructuredScoreRequest:
    """Validate a score request given as a dict (or either request model)."""
    return SCORE_REQUEST.validate_python(data)

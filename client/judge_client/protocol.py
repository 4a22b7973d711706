"""The service's HTTP wire models: what each endpoint accepts and answers.

Structural rules live here, so the OpenAPI schema states them: a client generated from
``/openapi.json`` cannot build a request these models refuse, apart from the rules JSON
Schema cannot express (named in the README). Limits that depend on the deployment (items
per request, prompt length in tokens, what the loaded tokenizer makes of a label) are
checked by the server.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, TypeAdapter, model_validator

MAX_TEXT_CHARS = 200_000
MAX_LABELS = 32
MAX_LABEL_CHARS = 32
MAX_MARKER_CHARS = 64
# A deadline shorter than this cannot be met by any engine; it is refused with 422.
MIN_TIMEOUT_S = 0.01
MAX_TIMEOUT_S = 3600.0
DEFAULT_LABELS = ("1", "2", "3", "4", "5")
# The mt-bench preset's scale, when the request gives no rubric.
MT_BENCH_LABELS = tuple(str(n) for n in range(1, 11))
# Structural caps; each deployment's own (JUDGE_MAX_CRITERIA, JUDGE_MAX_RANK_CANDIDATES) is
# written into its /openapi.json and is at most these.
MAX_CRITERIA = 32
MAX_RANK_CANDIDATES = 64
MAX_HIDDEN_LAYERS = 16
MAX_LAYER_INDEX = 1024

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
NonEmptyText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL_CHARS)]
Method = Literal["final", "lager", "lager_weighted", "probe"]
Template = Literal["default", "rubric_last", "prometheus", "mt-bench"]
CriterionName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# A value passed to the model's chat template.
ChatValue = (
    bool | int | Annotated[float, Field(allow_inf_nan=False)] | Annotated[str, StringConstraints(max_length=1000)]
)
# Arguments to the model's chat template; the keys a server allows are its setting.
ChatTemplateKwargs = dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], ChatValue]
CHAT_TEMPLATE_KWARGS_DESCRIPTION = (
    "Passed to the model's chat template, e.g. {'enable_thinking': false}; the keys the server allows "
    "are a setting (JUDGE_CHAT_TEMPLATE_KWARGS)."
)
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Timeout = Annotated[
    float,
    Field(
        ge=MIN_TIMEOUT_S,
        le=MAX_TIMEOUT_S,
        description=f"Deadline in seconds ({MIN_TIMEOUT_S} to {MAX_TIMEOUT_S:g}), capped by the server's maximum.",
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    # A newer server may add fields; an older client keeps working.
    model_config = ConfigDict(extra="ignore")


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


class CritiqueSpec(_Request):
    """Critique mode: the judge writes greedily first; its labels are read after the marker."""

    max_tokens: int = Field(
        ..., ge=1, description="Most tokens to generate; at most the server's JUDGE_MAX_CRITIQUE_TOKENS."
    )
    marker: str = Field(
        ...,
        min_length=1,
        max_length=MAX_MARKER_CHARS,
        description=(
            "Generation stops once the generated text contains it; when it never comes, it is "
            "appended before the labels are read."
        ),
    )


class _ScoreOptions(_Request):
    label_values: dict[Label, FiniteFloat] | None = Field(
        None, description="Numeric value of each label; numeric labels default to their number."
    )
    method: Method = "final"
    return_layers: bool = Field(False, description="Add per-layer label distributions.")
    return_logprobs: bool = Field(False, description="Add each label's raw log-probability.")
    hidden_layers: list[Annotated[int, Field(ge=0, le=MAX_LAYER_INDEX)]] | None = Field(
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

    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": {"required": ["rubric", "rubrics"]}})

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


class CalibratedScore(_Response):
    """The judge's distribution mapped onto the human scale by the server's calibration."""

    distribution: dict[str, float]
    expected_score: float | None
    mode: str
    std: float | None
    confidence: float


class CriterionScore(_Response):
    """One criterion of a several-criteria request: what a one-rubric request would return."""

    distribution: dict[str, float]
    expected_score: float | None
    mode: str
    std: float | None
    confidence: float
    label_mass: float
    prompt_tokens: int
    prompt_version: str
    calibrated: CalibratedScore | None = None
    calibration_note: str | None = None
    needs_review: bool = False
    review_reasons: list[str] = Field(default_factory=list)
    critique: str | None = None
    marker_found: bool | None = None
    critique_tokens: int | None = None


class ItemScore(_Response):
    id: str
    distribution: dict[str, float] = Field(description="Probabilities over the labels; sum to 1.")
    expected_score: float | None = Field(description="Sum of p * value; null without numeric values.")
    mode: str = Field(description="The most probable label.")
    std: float | None = Field(description="Standard deviation of the score under the distribution.")
    confidence: float = Field(description="1 - entropy / log(number of labels), in [0, 1].")
    label_mass: float = Field(description="Probability of all labels before renormalising.")
    prompt_tokens: int
    logprobs: dict[str, float] | None = Field(
        None, description="Raw log-probability of each label over the full vocabulary (return_logprobs)."
    )
    layers: list[dict[str, float]] | None = Field(
        None, description="Per-layer label distributions, embeddings first (return_layers)."
    )
    hidden: dict[str, list[float]] | None = Field(
        default=None,
        description="Scoring-position hidden state per requested entry, keyed by its index (hidden_layers).",
    )
    calibrated: CalibratedScore | None = Field(
        default=None, description="The distribution on the human scale (with a calibration that fits this request)."
    )
    calibration_note: str | None = Field(default=None, description="Why calibrated is null.")
    needs_review: bool = Field(False, description="Whether a person should look at this result.")
    review_reasons: list[str] = Field(default_factory=list, description="Why it needs review.")
    criteria: dict[str, CriterionScore] | None = Field(
        default=None, description="Per criterion (rubrics); the top-level fields are then their weighted aggregate."
    )
    critique: str | None = Field(default=None, description="Critique mode: the generated text, marker included.")
    marker_found: bool | None = Field(
        default=None, description="Critique mode: whether the judge wrote the marker (else it was appended)."
    )
    critique_tokens: int | None = Field(default=None, description="Critique mode: tokens generated.")


class ScoreResponse(_Response):
    model: str
    method: Method
    prompt_version: str = Field(description="Hash of everything that shapes the prompts apart from the items.")
    results: list[ItemScore]


class ComparePair(_Request):
    id: ItemId
    instruction: Text
    response_a: Text
    response_b: Text


class LengthControl(_Request):
    """WildBench's rule: 'slightly better' becomes a tie when the winner is longer by more than K characters."""

    k: int = Field(..., ge=0, description="Characters by which a slightly-better winner may be longer.")


class CompareRequest(_Request):
    pairs: list[ComparePair] = Field(..., min_length=1)
    criteria: NonEmptyText | None = Field(None, description="What 'better' means; a general default.")
    swap: bool = Field(True, description="Also score with B shown first and average the two orders.")
    length_control: LengthControl | None = None
    timeout_s: Timeout | None = None
    critique: CritiqueSpec | None = Field(
        None,
        description=(
            "The judge explains first, then writes the marker and its verdict; the verdict is read after the "
            "marker, in each order."
        ),
    )
    chat_template_kwargs: ChatTemplateKwargs | None = Field(
        None, max_length=16, description=CHAT_TEMPLATE_KWARGS_DESCRIPTION
    )


class OrderCritique(_Response):
    """What the judge wrote before its verdict in one order (critique mode)."""

    critique: str = Field(description="The generated text, marker included.")
    marker_found: bool = Field(description="Whether the judge wrote the marker (else it was appended).")
    critique_tokens: int = Field(description="Tokens generated.")


class PairVerdict(_Response):
    id: str
    distribution: dict[str, float] = Field(description="Over A>>B, A>B, A=B, B>A, B>>A; order-averaged.")
    p_a_wins: float
    p_tie: float
    p_b_wins: float
    verdict: str = Field(description="The most probable of the five verdicts.")
    position_consistency: float | None = Field(
        description="1 - total variation distance between the two orders' distributions; null without swap."
    )
    orders: dict[str, dict[str, float]] = Field(description="Each order's own distribution, keyed 'ab' and 'ba'.")
    prompt_tokens: int
    critiques: dict[str, OrderCritique] | None = Field(
        default=None, description="Critique mode: each order's critique, keyed as orders; null otherwise."
    )


class CompareResponse(_Response):
    model: str
    prompt_version: str = Field(description="Hash of everything that shapes the prompts apart from the pairs.")
    results: list[PairVerdict]


class RankCandidate(_Request):
    id: ItemId
    response: Text


class RankRequest(_Request):
    instruction: Text
    candidates: list[RankCandidate] = Field(..., min_length=2, max_length=MAX_RANK_CANDIDATES)
    criteria: NonEmptyText | None = Field(
        None, description="What 'better' means (pairwise), or the rubric's criteria (pointwise); a general default."
    )
    strategy: Literal["pairwise", "pointwise"] = Field(
        "pairwise", description="Compare candidates in pairs (Bradley-Terry), or score each alone."
    )
    timeout_s: Timeout | None = None

    @model_validator(mode="after")
    def _unique_ids(self) -> RankRequest:
        if len({c.id for c in self.candidates}) != len(self.candidates):
            raise ValueError("candidate ids must be unique")
        return self


class RankedCandidate(_Response):
    id: str
    rank: int = Field(description="1 is the best.")
    score: float = Field(description="Bradley-Terry strength (pairwise, centred on 0), or the expected score.")
    interval: list[float] | None = Field(description="Bootstrap 95% interval of the score (pairwise).")
    rank_interval: list[float] | None = Field(description="Bootstrap 95% interval of the rank (pairwise).")
    wins: float | None = Field(description="Expected wins in the comparisons made (pairwise).")
    std: float | None = Field(description="Standard deviation of the score distribution (pointwise).")


class RankResponse(_Response):
    model: str
    strategy: Literal["pairwise", "pointwise"]
    prompt_version: str
    ranking: list[RankedCandidate] = Field(description="Best first.")
    comparisons: int = Field(description="Pairs compared (each in both orders); 0 for pointwise.")


class ReadyResponse(_Response):
    status: Literal["ok"]
    model: str
    engine: str
    max_items: int = Field(description="Most items (or pairs) one request may carry.")


class HealthResponse(_Response):
    status: Literal["ok"]


class ErrorDetail(_Response):
    type: str
    message: str
    details: Any = None


class ErrorResponse(_Response):
    """The one shape of every error answer."""

    error: ErrorDetail

"""HTTP wire models. Structural limits live here; deployment limits in ``prompts``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

MAX_TEXT_CHARS = 200_000
MAX_LABELS = 32

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Method = Literal["final", "lager", "lager_weighted"]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
DEFAULT_LABELS = ("1", "2", "3", "4", "5")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreItem(_Wire):
    """Either a structured item (instruction + response) or a raw prompt, not both."""

    id: ItemId
    instruction: Text | None = None
    response: Text | None = None
    reference_answer: Text | None = None
    prompt: Text | None = Field(None, description="Full prompt, used verbatim: no chat template, no special tokens.")

    @model_validator(mode="after")
    def _one_kind(self) -> ScoreItem:
        structured = self.instruction is not None or self.response is not None
        if self.prompt is not None:
            if structured or self.reference_answer is not None:
                raise ValueError("give either 'prompt' or 'instruction' and 'response', not both")
            if not self.prompt:
                raise ValueError("'prompt' must not be empty")
        elif self.instruction is None or self.response is None:
            raise ValueError("a structured item needs both 'instruction' and 'response'")
        return self

    @property
    def is_raw(self) -> bool:
        return self.prompt is not None


class RubricSpec(_Wire):
    criteria: Text = Field(..., min_length=1)
    score_descriptions: dict[Label, Text] = Field(
        ...,
        min_length=2,
        max_length=MAX_LABELS,
        description="Label -> description, in score order. Labels must be single tokens.",
    )


class ScoreRequest(_Wire):
    items: list[ScoreItem] = Field(..., min_length=1)
    rubric: RubricSpec | None = Field(
        None, description="Structured items only; a general-quality 1-5 rubric by default."
    )
    labels: list[Label] | None = Field(
        None,
        min_length=2,
        max_length=MAX_LABELS,
        description="Raw prompts only; default ['1','2','3','4','5'].",
    )
    label_values: dict[Label, FiniteFloat] | None = Field(
        None, description="Numeric value of each label; numeric labels default to their number."
    )
    method: Method = "final"
    return_layers: bool = Field(False, description="Add per-layer label distributions.")
    return_logprobs: bool = Field(False, description="Add each label's raw log-probability.")
    layer_norm: bool | None = Field(
        None, description="LAGER: apply the final norm to each layer first; default from the server."
    )
    timeout_s: float | None = Field(None, gt=0, le=3600, description="Deadline for this request, capped by the server.")

    @model_validator(mode="after")
    def _consistent(self) -> ScoreRequest:
        kinds = {item.is_raw for item in self.items}
        if len(kinds) > 1:
            raise ValueError("items must be all raw prompts or all structured, not a mix")
        raw = kinds == {True}
        if raw and self.rubric is not None:
            raise ValueError("'rubric' applies to structured items; raw prompts carry their own")
        if not raw and self.labels is not None:
            raise ValueError("structured items take their labels from rubric.score_descriptions")
        if len(set(self.labels or ())) != len(self.labels or ()):
            raise ValueError("labels must be unique")
        if self.label_values is not None:
            labels = self.label_set
            unknown = sorted(set(self.label_values) - set(labels))
            if unknown:
                raise ValueError(f"label_values names unknown labels: {unknown}")
        return self

    @property
    def label_set(self) -> tuple[str, ...]:
        """The labels this request reads, in score order."""
        if self.labels is not None:
            return tuple(self.labels)
        if self.rubric is not None:
            return tuple(self.rubric.score_descriptions)
        return DEFAULT_LABELS


class ItemScore(_Wire):
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


class ScoreResponse(_Wire):
    model: str
    method: Method
    results: list[ItemScore]


class ReadyResponse(_Wire):
    status: Literal["ok"]
    model: str
    engine: str
    max_items: int = Field(description="Most items (or pairs) one request may carry.")


class HealthResponse(_Wire):
    status: Literal["ok"]


VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")


class ComparePair(_Wire):
    id: ItemId
    instruction: Text
    response_a: Text
    response_b: Text


class LengthControl(_Wire):
    """WildBench's rule: 'slightly better' becomes a tie when the winner is longer by more than K characters."""

    k: int = Field(..., ge=0, description="Characters by which a slightly-better winner may be longer.")


class CompareRequest(_Wire):
    pairs: list[ComparePair] = Field(..., min_length=1)
    criteria: Text | None = Field(None, min_length=1, description="What 'better' means; a general default.")
    swap: bool = Field(True, description="Also score with B shown first and average the two orders.")
    length_control: LengthControl | None = None
    timeout_s: float | None = Field(None, gt=0, le=3600, description="Deadline, capped by the server.")


class PairVerdict(_Wire):
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


class CompareResponse(_Wire):
    model: str
    results: list[PairVerdict]

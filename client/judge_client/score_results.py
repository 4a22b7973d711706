"""The /v1/score answer: each item's label distribution and what is read from it
(calibration, review flags, per-criterion scores, the critique)."""

from __future__ import annotations

from pydantic import Field

from judge_client.fields import Method, _Response


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

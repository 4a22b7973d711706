"""What every wire model shares: the structural limits, the field types, the request and
response bases, and the critique spec that score and compare requests both take.

Structural rules live in the wire models, so the OpenAPI schema states them: a client
generated from ``/openapi.json`` cannot build a request these models refuse, apart from the
rules JSON Schema cannot express (named in the docs' API pages). Limits that depend on the deployment
(items per request, prompt length in tokens, what the loaded tokenizer makes of a label) are
checked by the server.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

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


def _integral(value: object) -> object:
    """A JSON number with no fraction (``5.0``) is an integer, as JSON Schema says."""
    return int(value) if type(value) is float and value.is_integer() else value


# Request models are strict (a number is never `true` or "5"); their integers still take 5.0.
Integer = Annotated[int, BeforeValidator(_integral)]
Timeout = Annotated[
    float,
    Field(
        ge=MIN_TIMEOUT_S,
        le=MAX_TIMEOUT_S,
        description=f"Deadline in seconds ({MIN_TIMEOUT_S} to {MAX_TIMEOUT_S:g}), capped by the server's maximum.",
    ),
]


class _Request(BaseModel):
    # Strict: a number is a JSON number, not `true` or "5", as the schema says.
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    # A newer server may add fields; an older client keeps working.
    model_config = ConfigDict(extra="ignore")


class CritiqueSpec(_Request):
    """Critique mode: the judge writes greedily first; its labels are read after the marker."""

    max_tokens: Integer = Field(
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

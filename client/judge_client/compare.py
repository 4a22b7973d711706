"""The /v1/compare request (pairs of responses, optional swap, length control and critique)
and its answer: each pair's verdict distribution, order by order."""

from __future__ import annotations

from pydantic import Field

from judge_client.fields import (
    CHAT_TEMPLATE_KWARGS_DESCRIPTION,
    ChatTemplateKwargs,
    CritiqueSpec,
    Integer,
    ItemId,
    NonEmptyText,
    Text,
    Timeout,
    _Request,
    _Response,
)


class ComparePair(_Request):
    id: ItemId
    instruction: Text
    response_a: Text
    response_b: Text


class LengthControl(_Request):
    """WildBench's rule: 'slightly better' becomes a tie when the winner is longer by more than K characters."""

    k: Integer = Field(..., ge=0, description="Characters by which a slightly-better winner may be longer.")


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

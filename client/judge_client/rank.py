"""The /v1/rank request (one instruction, its candidate responses, pairwise or pointwise)
and its answer: the candidates best first, with their scores and intervals."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from judge_client.fields import MAX_RANK_CANDIDATES, ItemId, NonEmptyText, Text, Timeout, _Request, _Response


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

"""Rubrics: the criteria and the labelled score descriptions a judge grades against."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CRITERIA = "Overall quality: is the response helpful, correct, relevant to the task, clear and complete?"

DEFAULT_SCORE_DESCRIPTIONS = {
    "1": "Very poor: wrong, irrelevant or unhelpful.",
    "2": "Poor: mostly unhelpful or with major errors.",
    "3": "Fair: partly helpful, with noticeable errors or omissions.",
    "4": "Good: helpful and correct, with minor issues.",
    "5": "Excellent: fully helpful, correct, clear and complete.",
}


@dataclass(frozen=True, slots=True)
class Rubric:
    criteria: str
    score_descriptions: tuple[tuple[str, str], ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for label, _ in self.score_descriptions)


DEFAULT_RUBRIC = Rubric(DEFAULT_CRITERIA, tuple(DEFAULT_SCORE_DESCRIPTIONS.items()))

"""What preparing a request gives: its tasks, and what answering them needs besides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from service.core.tasks import ScoringTask

Context = TypeVar("Context")


@dataclass(frozen=True)
class Prepared(Generic[Context]):
    """A request's tasks, every limit checked, in the order their results come back; and
    the ``context`` its answer is built with (its criteria, pairs, prompt version)."""

    tasks: list[ScoringTask]
    context: Context

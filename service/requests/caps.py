"""The deployment's caps on one request, from the settings: items, criteria and
candidates per request, the critique's length, and the chat-template arguments a request
may pass. Each check raises a ``JudgeError`` naming the field and both numbers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.config import Settings
from service.core.errors import ErrorKind, JudgeError


@dataclass(frozen=True)
class RequestCaps:
    """What one request may ask of this deployment."""

    max_items: int
    max_critique_tokens: int
    max_criteria: int = 8
    max_rank_candidates: int = 16
    chat_template_keys: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestCaps:
        return cls(
            max_items=settings.max_items,
            max_critique_tokens=settings.max_critique_tokens,
            max_criteria=settings.max_criteria,
            max_rank_candidates=settings.max_rank_candidates,
            chat_template_keys=tuple(settings.chat_template_keys),
        )

    def check_count(self, count: int, what: str) -> None:
        """Items (or pairs) per request."""
        _at_most(count, what, self.max_items, "max_items")

    def check_criteria(self, count: int) -> None:
        _at_most(count, "criteria", self.max_criteria, "max_criteria")

    def check_candidates(self, count: int) -> None:
        _at_most(count, "candidates", self.max_rank_candidates, "max_rank_candidates")

    def check_critique_tokens(self, max_tokens: int) -> None:
        if max_tokens > self.max_critique_tokens:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"critique.max_tokens is {max_tokens}; this server generates at most {self.max_critique_tokens}",
                {"max_tokens": max_tokens, "max_critique_tokens": self.max_critique_tokens},
            )

    def chat_template_kwargs(self, requested: Mapping[str, Any] | None) -> dict[str, Any]:
        """The request's chat-template arguments, if the server allows every key."""
        kwargs = dict(requested or {})
        refused = sorted(set(kwargs) - set(self.chat_template_keys))
        if refused:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"chat_template_kwargs may carry only {list(self.chat_template_keys)} on this server "
                f"(JUDGE_CHAT_TEMPLATE_KWARGS); refused: {refused}",
                {"refused": refused, "allowed": list(self.chat_template_keys)},
            )
        return kwargs


def _at_most(count: int, what: str, cap: int, cap_name: str) -> None:
    if count > cap:
        raise JudgeError(
            ErrorKind.INVALID_REQUEST,
            f"{count} {what} exceed the limit of {cap} per request",
            {what: count, cap_name: cap},
        )

"""The service's own answers: readiness, health, and the one shape of every error."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from judge_client.fields import _Response


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

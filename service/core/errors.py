"""The domain errors, without the web framework: ``ErrorKind`` (each kind with its HTTP
status, the only place statuses are chosen), ``JudgeError``, the engine's errors, and
``error_for``, which maps any exception to a ``JudgeError`` (the queue and the handlers use
it, so an exception means the same answer everywhere). ``service.http.errors`` turns them
into responses.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any


class EngineError(Exception):
    """The engine failed a batch."""


class EngineDead(EngineError):
    """The engine can no longer serve; the process should be restarted."""


class UnsupportedModel(EngineError):
    """The engine cannot serve this model's scores exactly; it refuses to load it."""


class ErrorKind(enum.Enum):
    """Error kinds with their HTTP status; the only place statuses are chosen."""

    INVALID_REQUEST = ("invalid_request", 422)
    UNAUTHORIZED = ("unauthorized", 401)
    PAYLOAD_TOO_LARGE = ("payload_too_large", 413)
    QUEUE_FULL = ("queue_full", 429)
    OVERLOADED = ("overloaded", 429)
    DEADLINE_EXCEEDED = ("deadline_exceeded", 504)
    UNAVAILABLE = ("unavailable", 503)
    NOT_FOUND = ("not_found", 404)
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405)
    INTERNAL = ("internal", 500)

    @property
    def status(self) -> int:
        return self.value[1]

    @property
    def type_name(self) -> str:
        return self.value[0]


class JudgeError(Exception):
    """A failure with a kind, a message safe to show, optional details and, for 429 and
    503, how many seconds to wait before retrying."""

    def __init__(self, kind: ErrorKind, message: str, details: Any = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s


def error_for(exc: BaseException) -> JudgeError:
    """The error a client gets for ``exc``; internal text never leaves the process."""
    if isinstance(exc, JudgeError):
        return exc
    if isinstance(exc, EngineDead):
        return JudgeError(ErrorKind.UNAVAILABLE, "the judge engine is unavailable")
    if isinstance(exc, asyncio.CancelledError):
        return JudgeError(ErrorKind.UNAVAILABLE, "the service is shutting down")
    return JudgeError(ErrorKind.INTERNAL, "internal error")


def error_body(kind: ErrorKind, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"type": kind.type_name, "message": message, "details": details}}

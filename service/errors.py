"""The one error table: every failure becomes ``{"error": {type, message, details}}``.

``ErrorKind`` chooses the HTTP status; ``error_for`` maps any exception to a ``JudgeError``
(the queue and the handlers use it, so an exception means the same answer everywhere).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.engines.base import EngineDead

logger = logging.getLogger(__name__)


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


# Seconds a client should wait before retrying, when the error names none of its own.
RETRY_AFTER_S = {ErrorKind.QUEUE_FULL: 1, ErrorKind.OVERLOADED: 1, ErrorKind.UNAVAILABLE: 5}


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


def error_response(
    kind: ErrorKind,
    message: str,
    details: Any = None,
    retry_after_s: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after_s is None:
        retry_after_s = RETRY_AFTER_S.get(kind)
    if retry_after_s is not None:
        # Retry-After takes whole seconds (RFC 9110); round up so a retry is not early.
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    if kind is ErrorKind.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="judge-service"'
    return JSONResponse(error_body(kind, message, details), status_code=kind.status, headers=headers)


# The tag of the score request's union (raw or structured) is not part of the body.
_UNION_TAGS = {"raw", "structured"}


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only location, message and type: pydantic's 'input' and 'ctx' may echo large
    # or internal values back to the client.
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if len(loc) > 1 and loc[0] == "body" and loc[1] in _UNION_TAGS:
            del loc[1]
        details.append({"loc": loc, "msg": err.get("msg", ""), "type": err.get("type", "")})
    return details


async def _on_judge_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JudgeError)
    return error_response(exc.kind, exc.message, exc.details, exc.retry_after_s)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    fields = sorted({".".join(d["loc"][1:]) or d["loc"][0] for d in details if d["loc"]})
    reasons = sorted({d["msg"] for d in details if d["type"] in ("mixed_items", "value_error")})
    message = "invalid request: " + ", ".join(fields) if fields else "invalid request"
    if reasons:
        message += " (" + "; ".join(reasons) + ")"
    return error_response(ErrorKind.INVALID_REQUEST, message, details)


_HTTP_KINDS = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED, 413: ErrorKind.PAYLOAD_TOO_LARGE}


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _HTTP_KINDS.get(exc.status_code, ErrorKind.INVALID_REQUEST if exc.status_code < 500 else ErrorKind.INTERNAL)
    # Keep the router's own headers: a 405 must say which methods are allowed (RFC 9110).
    return error_response(kind, kind.type_name.replace("_", " "), headers=dict(exc.headers or {}))


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return error_response(ErrorKind.INTERNAL, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JudgeError, _on_judge_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)

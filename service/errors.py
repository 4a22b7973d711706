"""The one error table: every failure becomes ``{"error": {type, message, details}}``."""

from __future__ import annotations

import enum
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ErrorKind(enum.Enum):
    """Error kinds with their HTTP status; the only place statuses are chosen."""

    INVALID_REQUEST = 422
    UNAUTHORIZED = 401
    PAYLOAD_TOO_LARGE = 413
    QUEUE_FULL = 429
    DEADLINE_EXCEEDED = 504
    UNAVAILABLE = 503
    NOT_FOUND = 404
    METHOD_NOT_ALLOWED = 405
    INTERNAL = 500

    @property
    def status(self) -> int:
        return self.value

    @property
    def type_name(self) -> str:
        return self.name.lower()


# Seconds a client should wait before retrying a 429 or 503.
RETRY_AFTER_S = {ErrorKind.QUEUE_FULL: 1, ErrorKind.UNAVAILABLE: 5}


class JudgeError(Exception):
    """A failure with a kind, a message safe to show, and optional structured details."""

    def __init__(self, kind: ErrorKind, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details


def error_body(kind: ErrorKind, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"type": kind.type_name, "message": message, "details": details}}


def error_response(kind: ErrorKind, message: str, details: Any = None) -> JSONResponse:
    headers = {}
    if kind in RETRY_AFTER_S:
        headers["Retry-After"] = str(RETRY_AFTER_S[kind])
    if kind is ErrorKind.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="judge-service"'

    return JSONResponse(error_body(kind, message, details), status_code=kind.status, headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only location, message and type: pydantic's 'input' and 'ctx' may echo large
    # or internal values back to the client.
    return [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


async def _on_judge_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JudgeError)
    return error_response(exc.kind, exc.message, exc.details)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    fields = sorted({".".join(d["loc"][1:]) or d["loc"][0] for d in details if d["loc"]})
    message = "invalid request: " + ", ".join(fields) if fields else "invalid request"
    return error_response(ErrorKind.INVALID_REQUEST, message, details)


_HTTP_KINDS = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED, 413: ErrorKind.PAYLOAD_TOO_LARGE}


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _HTTP_KINDS.get(exc.status_code, ErrorKind.INVALID_REQUEST if exc.status_code < 500 else ErrorKind.INTERNAL)
    return error_response(kind, kind.type_name.replace("_", " "))


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return error_response(ErrorKind.INTERNAL, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JudgeError, _on_judge_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)

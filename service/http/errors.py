"""The one error table's HTTP side: every failure becomes ``{"error": {type, message, details}}``.

The kinds and ``JudgeError`` are ``service.core.errors``; this module installs the
handlers that answer them, FastAPI's validation errors and the router's own errors.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import ErrorKind, JudgeError, error_body
from service.requests.validation import invalid_request

logger = logging.getLogger(__name__)


# Seconds a client should wait before retrying, when the error names none of its own.
RETRY_AFTER_S = {ErrorKind.QUEUE_FULL: 1, ErrorKind.OVERLOADED: 1, ErrorKind.UNAVAILABLE: 5}


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


async def _on_judge_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JudgeError)
    return error_response(exc.kind, exc.message, exc.details, exc.retry_after_s)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    error = invalid_request(exc.errors())
    return error_response(error.kind, error.message, error.details)


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

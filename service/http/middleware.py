"""Pure ASGI middleware: body-size limit and per-request metrics."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import ErrorKind
from service.http.errors import error_response
from service.observability.metrics import Metrics, outcome_of

SCORED_PATHS = {"/v1/score": "score", "/v1/compare": "compare", "/v1/rank": "rank"}


class BodyLimit:
    """Reject bodies over ``max_bytes`` with 413 before the app parses them.

    The body is read here, bounded, and replayed; later ``receive`` calls go to the
    server, so the app still hears ``http.disconnect``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Paths that enforce their own limit (a batch file upload is far larger than a request).
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            ErrorKind.PAYLOAD_TOO_LARGE,
            f"request body exceeds {self.max_bytes} bytes",
            {"max_body_bytes": self.max_bytes},
        )
        await response(scope, receive, send)


class RequestMetrics:
    """Count scoring requests by outcome and time them, whatever layer answered."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = SCORED_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        status: dict[str, Any] = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.monotonic()
        # A request's deadline runs from here, before its body is read and validated.
        scope.setdefault("state", {})["arrived"] = started
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.request_duration.labels(endpoint=endpoint).observe(time.monotonic() - started)
            self.metrics.requests.labels(endpoint=endpoint, outcome=outcome_of(status["code"])).inc()

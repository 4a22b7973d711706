"""One line of a batch answered by the same serving code as its synchronous endpoint:
the same validation, the same service, the same error envelope and status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from judge_client.protocol import CompareRequest, RankRequest, ScoreRequest
from pydantic import BaseModel, TypeAdapter, ValidationError

from service.core.errors import ErrorKind, JudgeError, error_body
from service.requests.validation import invalid_request
from service.serving import CompareService, RankService, ScoreService
from service.serving.runner import Runner
from service.serving.runtime import Runtime

logger = logging.getLogger(__name__)

# Errors that say "not now" rather than "not this request": the line stays pending and
# runs again (after a restart, on another replica, or once the judge is ready).
RETRY_KINDS = (ErrorKind.UNAVAILABLE, ErrorKind.QUEUE_FULL, ErrorKind.OVERLOADED, ErrorKind.DEADLINE_EXCEEDED)

_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "/v1/score": TypeAdapter(ScoreRequest),
    "/v1/compare": TypeAdapter(CompareRequest),
    "/v1/rank": TypeAdapter(RankRequest),
}


class Retry(Exception):
    """The line could not be answered now; it stays pending."""


class Answerer:
    """Answers batch lines through the same services as the endpoints, on ``runner`` (the
    runtime's batch runner)."""

    def __init__(self, runtime: Runtime, runner: Runner) -> None:
        self._serve: dict[str, Callable[..., Awaitable[BaseModel]]] = {
            "/v1/score": ScoreService(runtime, runner).serve,
            "/v1/compare": CompareService(runtime, runner).serve,
            "/v1/rank": RankService(runtime, runner).serve,
        }

    async def answer(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, body) as the endpoint answers ``body``; raises ``Retry`` for a transient refusal."""
        try:
            request = _ADAPTERS[endpoint].validate_python(body)
        except ValidationError as exc:
            return 422, _validation_body(exc)
        try:
            # No timeout: inside a batch the completion window is the deadline.
            response = await self._serve[endpoint](request, None, None)
        except JudgeError as exc:
            if exc.kind in RETRY_KINDS:
                raise Retry from exc
            return exc.kind.status, error_body(exc.kind, exc.message, exc.details)
        except Exception:
            # As the app's handler of the unexpected: logged with its stack, answered generically.
            logger.exception("a batch line failed")
            return ErrorKind.INTERNAL.status, error_body(ErrorKind.INTERNAL, "internal error")
        return 200, response.model_dump(mode="json")


def _validation_body(exc: ValidationError) -> dict[str, Any]:
    """The envelope the endpoint's own validation gives: FastAPI's errors (located under
    ``body``) through the same ``invalid_request``."""
    error = invalid_request([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()])
    return error_body(error.kind, error.message, error.details)

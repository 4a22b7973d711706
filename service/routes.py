"""Thin HTTP handlers: schema -> judge -> schema."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.batching import ClientGone
from service.errors import ErrorKind, error_body, error_response
from service.judge import Judge
from service.schemas import (
    CompareRequest,
    CompareResponse,
    HealthResponse,
    ReadyResponse,
    ScoreRequest,
    ScoreResponse,
)

router = APIRouter()


def _judge(request: Request) -> Judge:
    judge: Judge = request.app.state.judge
    return judge


JudgeDep = Annotated[Judge, Depends(_judge)]
_bearer = HTTPBearer(auto_error=False, description="An API key, when the server has keys configured.")


def _authorized(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    token = f"Bearer {credentials.credentials}" if credentials else None
    request.app.state.api_keys.check(token)


def _metrics_authorized(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    if request.app.state.settings.metrics_auth:
        _authorized(request, credentials)


def _error_doc(kind: ErrorKind, description: str) -> dict[str, Any]:
    example = error_body(kind, description)
    return {"description": description, "content": {"application/json": {"example": example}}}


SCORE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error_doc(ErrorKind.UNAUTHORIZED, "Missing or invalid API key."),
    413: _error_doc(ErrorKind.PAYLOAD_TOO_LARGE, "Request body too large."),
    422: _error_doc(ErrorKind.INVALID_REQUEST, "Invalid request; the message names the field or label."),
    429: _error_doc(ErrorKind.QUEUE_FULL, "Queue full; retry after Retry-After seconds."),
    500: _error_doc(ErrorKind.INTERNAL, "Internal error."),
    503: _error_doc(ErrorKind.UNAVAILABLE, "Not ready or shutting down."),
    504: _error_doc(ErrorKind.DEADLINE_EXCEEDED, "The request's deadline passed."),
}


async def _until_disconnect(request: Request) -> None:
    # The body is already read, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post("/v1/score", response_model=ScoreResponse, responses=SCORE_ERRORS, dependencies=[Depends(_authorized)])
async def score(
    body: ScoreRequest,
    request: Request,
    judge: JudgeDep,
    x_request_timeout: Annotated[float | None, Header(gt=0, le=3600)] = None,
) -> Response | ScoreResponse:
    """Score each item: the judge's distribution over the labels and scores derived from it."""
    try:
        return await judge.score(body, body.timeout_s or x_request_timeout, lambda: _until_disconnect(request))
    except ClientGone:
        # Nobody is listening; the status only feeds the request metrics.
        return Response(status_code=499)


@router.post("/v1/compare", response_model=CompareResponse, responses=SCORE_ERRORS, dependencies=[Depends(_authorized)])
async def compare(
    body: CompareRequest,
    request: Request,
    judge: JudgeDep,
    x_request_timeout: Annotated[float | None, Header(gt=0, le=3600)] = None,
) -> Response | CompareResponse:
    """Judge pairs of responses: an order-averaged five-way verdict distribution per pair."""
    try:
        return await judge.compare(body, body.timeout_s or x_request_timeout, lambda: _until_disconnect(request))
    except ClientGone:
        return Response(status_code=499)


@router.get("/health", response_model=HealthResponse, responses={503: _error_doc(ErrorKind.UNAVAILABLE, "Dead.")})
async def health(judge: JudgeDep) -> Response | HealthResponse:
    """Liveness: the process works and the engine has not died."""
    if not judge.alive:
        return error_response(ErrorKind.UNAVAILABLE, "the judge engine is dead")
    return HealthResponse(status="ok")


@router.get("/ready", response_model=ReadyResponse, responses={503: _error_doc(ErrorKind.UNAVAILABLE, "Not ready.")})
async def ready(judge: JudgeDep) -> Response | ReadyResponse:
    """Readiness: the model is loaded and warm, and the service is not draining."""
    if not judge.accepting:
        return error_response(ErrorKind.UNAVAILABLE, "not ready" if not judge.draining else "draining")
    return ReadyResponse(
        status="ok", model=judge.settings.model, engine=judge.engine_kind, max_items=judge.settings.max_items
    )


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(_metrics_authorized)])
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the service's own registry."""
    body = generate_latest(request.app.state.metrics.registry)
    if request.app.state.judge.engine_kind == "vllm":
        # vLLM registers its own metrics (prefix cache, KV cache, steps) on the default registry.
        body += generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

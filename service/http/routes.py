"""Thin HTTP handlers: wire request -> service -> wire response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from judge_client.protocol import (
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    CompareRequest,
    CompareResponse,
    ErrorResponse,
    HealthResponse,
    RankRequest,
    RankResponse,
    ReadyResponse,
    ScoreRequest,
    ScoreResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.core.errors import ErrorKind, error_body
from service.http.errors import error_response
from service.scheduling.scheduler import ClientGone
from service.serving import CompareService, RankService, ScoreService
from service.serving.lifecycle import Lifecycle
from service.serving.runtime import Runtime

router = APIRouter()


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


def _score_service(request: Request) -> ScoreService:
    service: ScoreService = request.app.state.score_service
    return service


def _compare_service(request: Request) -> CompareService:
    service: CompareService = request.app.state.compare_service
    return service


def _rank_service(request: Request) -> RankService:
    service: RankService = request.app.state.rank_service
    return service


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
LifecycleDep = Annotated[Lifecycle, Depends(_lifecycle)]
_bearer = HTTPBearer(auto_error=False, description="An API key, when the server has keys configured.")
RequestTimeout = Annotated[
    float | None,
    Header(ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, description="Deadline in seconds, as the body's timeout_s."),
]


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
    return {"model": ErrorResponse, "description": description, "content": {"application/json": {"example": example}}}


SCORE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error_doc(ErrorKind.UNAUTHORIZED, "Missing or invalid API key."),
    413: _error_doc(ErrorKind.PAYLOAD_TOO_LARGE, "Request body too large."),
    422: _error_doc(ErrorKind.INVALID_REQUEST, "Invalid request; the message names the field or label."),
    429: _error_doc(ErrorKind.QUEUE_FULL, "Queue full, or the deadline cannot be met at this load; see Retry-After."),
    500: _error_doc(ErrorKind.INTERNAL, "Internal error."),
    503: _error_doc(ErrorKind.UNAVAILABLE, "Not ready or shutting down."),
    504: _error_doc(ErrorKind.DEADLINE_EXCEEDED, "The request's deadline passed."),
}


async def _until_disconnect(request: Request) -> None:
    # The body is already read, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _arrived(request: Request) -> float | None:
    """When the request reached the server (``RequestMetrics`` stamps it): its deadline's start."""
    return getattr(request.state, "arrived", None)


async def _answer(
    serve: Callable[..., Awaitable[Any]], body: Any, request: Request, header_timeout: float | None
) -> Any:
    """Run a judging service on ``body``: its deadline (the body's, else the header's) from
    the request's arrival, given up when the client disconnects."""
    try:
        return await serve(
            body, body.timeout_s or header_timeout, lambda: _until_disconnect(request), _arrived(request)
        )
    except ClientGone:
        # Nobody is listening; the status only feeds the request metrics.
        return Response(status_code=499)


@router.post("/v1/score", response_model=ScoreResponse, responses=SCORE_ERRORS, dependencies=[Depends(_authorized)])
async def score(
    body: Annotated[ScoreRequest, Body()],
    request: Request,
    service: Annotated[ScoreService, Depends(_score_service)],
    x_request_timeout: RequestTimeout = None,
) -> Response | ScoreResponse:
    """Score each item: the judge's distribution over the labels and scores derived from it."""
    return await _answer(service.serve, body, request, x_request_timeout)


@router.post("/v1/compare", response_model=CompareResponse, responses=SCORE_ERRORS, dependencies=[Depends(_authorized)])
async def compare(
    body: CompareRequest,
    request: Request,
    service: Annotated[CompareService, Depends(_compare_service)],
    x_request_timeout: RequestTimeout = None,
) -> Response | CompareResponse:
    """Judge pairs of responses: an order-averaged five-way verdict distribution per pair."""
    return await _answer(service.serve, body, request, x_request_timeout)


@router.post("/v1/rank", response_model=RankResponse, responses=SCORE_ERRORS, dependencies=[Depends(_authorized)])
async def rank(
    body: RankRequest,
    request: Request,
    service: Annotated[RankService, Depends(_rank_service)],
    x_request_timeout: RequestTimeout = None,
) -> Response | RankResponse:
    """Rank candidate responses to one instruction, best first."""
    return await _answer(service.serve, body, request, x_request_timeout)


@router.get("/health", response_model=HealthResponse, responses={503: _error_doc(ErrorKind.UNAVAILABLE, "Dead.")})
async def health(lifecycle: LifecycleDep) -> Response | HealthResponse:
    """Liveness: the process works, the engine and the batch loop have not died, the engine
    has not stalled (see ``service.scheduling.watchdog``), and a load has not run past its deadline."""
    if (problem := lifecycle.problem) is not None:
        return error_response(ErrorKind.UNAVAILABLE, *problem)
    return HealthResponse(status="ok")


@router.get("/ready", response_model=ReadyResponse, responses={503: _error_doc(ErrorKind.UNAVAILABLE, "Not ready.")})
async def ready(runtime: RuntimeDep, lifecycle: LifecycleDep) -> Response | ReadyResponse:
    """Readiness: the model is loaded and warm, and the service is not draining."""
    if not lifecycle.accepting:
        return error_response(ErrorKind.UNAVAILABLE, "draining" if lifecycle.draining else "not ready")
    return ReadyResponse(
        status="ok", model=runtime.model_name, engine=runtime.engine_kind, max_items=runtime.settings.max_items
    )


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(_metrics_authorized)])
async def metrics(request: Request, runtime: RuntimeDep) -> Response:
    """Prometheus text exposition of the service's own registry."""
    body = generate_latest(runtime.metrics.registry)
    if runtime.engine_kind == "vllm":
        # vLLM registers its own metrics (prefix cache, KV cache, steps) on the default registry.
        body += generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

"""Thin HTTP handlers of batch jobs: ``/v1/files`` and ``/v1/batches``, as OpenAI's Batch API."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from judge_client.protocol import ErrorResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import ErrorKind, JudgeError, error_body
from service.jobs.batches import BatchService
from service.jobs.lines import Endpoint

# Query parameters each route takes; any other is refused (422), as an unknown body field is.
_QUERY = {("GET", "/v1/batches"): {"limit", "after"}}


def _known_query(request: Request) -> None:
    route = getattr(request.scope.get("route"), "path", "")
    unknown = set(request.query_params) - _QUERY.get((request.method, route), set())
    if unknown:
        raise JudgeError(
            ErrorKind.INVALID_REQUEST, "unknown query parameters: " + ", ".join(sorted(unknown)), sorted(unknown)
        )


batch_router = APIRouter(tags=["batches"], dependencies=[Depends(_known_query)])
_bearer = HTTPBearer(auto_error=False, description="An API key, when the server has keys configured.")
# Multipart framing around the file: headers, boundaries and the purpose field.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


def _error_doc(kind: ErrorKind, description: str) -> dict[str, Any]:
    example = error_body(kind, description)
    return {"model": ErrorResponse, "description": description, "content": {"application/json": {"example": example}}}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error_doc(ErrorKind.UNAUTHORIZED, "Missing or invalid API key."),
    404: _error_doc(ErrorKind.NOT_FOUND, "No such file or batch for this key."),
    422: _error_doc(ErrorKind.INVALID_REQUEST, "Invalid request."),
    500: _error_doc(ErrorKind.INTERNAL, "Internal error."),
    503: _error_doc(ErrorKind.UNAVAILABLE, "The job store is not open."),
}
UPLOAD_ERRORS = {**ERRORS, 413: _error_doc(ErrorKind.PAYLOAD_TOO_LARGE, "File over JUDGE_JOBS_MAX_FILE_BYTES.")}
# Durations up to 7 days: seconds (5 digits), minutes (4 digits) or hours (1-168).
WINDOW_PATTERN = r"^([1-9][0-9]{0,4}s|[1-9][0-9]{0,3}m|([1-9]|[1-9][0-9]|1[0-5][0-9]|16[0-8])h)$"


def _owner(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The caller's owner tag: its key's SHA-256 (only the key's holder sees what it made);
    empty when the server has no keys."""
    request.app.state.api_keys.check(f"Bearer {credentials.credentials}" if credentials else None)
    if not request.app.state.api_keys.enabled or credentials is None:
        return ""
    return hashlib.sha256(credentials.credentials.strip().encode()).hexdigest()


def _service(request: Request) -> BatchService:
    service: BatchService = request.app.state.batch_service
    return service


Owner = Annotated[str, Depends(_owner)]
Service = Annotated[BatchService, Depends(_service)]


class BatchCreate(BaseModel):
    """``POST /v1/batches``; fields OpenAI defines that do not apply here are ignored."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=200)
    endpoint: Endpoint
    completion_window: str = Field("24h", pattern=WINDOW_PATTERN)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16
    )


async def _read_bounded(file: UploadFile, limit: int) -> bytes:
    """The upload's bytes, or 413 as soon as it passes ``limit``."""
    chunks, size = [], 0
    while chunk := await file.read(1024 * 1024):
        size += len(chunk)
        if size > limit:
            raise JudgeError(
                ErrorKind.PAYLOAD_TOO_LARGE, f"the file exceeds {limit} bytes", {"jobs_max_file_bytes": limit}
            )
        chunks.append(chunk)
    return b"".join(chunks)


@batch_router.post("/v1/files", responses=UPLOAD_ERRORS)
async def upload_file(
    request: Request,
    owner: Owner,
    service: Service,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[Literal["batch"], Form()],
) -> dict[str, Any]:
    """Upload a JSONL file of requests (``purpose=batch``)."""
    limit = service.settings.jobs_max_file_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + UPLOAD_OVERHEAD_BYTES:
        raise JudgeError(ErrorKind.PAYLOAD_TOO_LARGE, f"the file exceeds {limit} bytes", {"jobs_max_file_bytes": limit})
    content = await _read_bounded(file, limit)
    return await service.add_file(owner, file.filename or "upload.jsonl", purpose, content)


@batch_router.get("/v1/files", responses=ERRORS)
async def list_files(owner: Owner, service: Service) -> dict[str, Any]:
    return await service.list_files(owner)


@batch_router.get("/v1/files/{file_id}", responses=ERRORS)
async def get_file(file_id: str, owner: Owner, service: Service) -> dict[str, Any]:
    return await service.get_file(owner, file_id)


@batch_router.get(
    "/v1/files/{file_id}/content",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"application/jsonl": {}}, "description": "The file's bytes."}},
)
async def file_content(file_id: str, owner: Owner, service: Service) -> Response:
    return Response(await service.file_content(owner, file_id), media_type="application/jsonl")


@batch_router.delete("/v1/files/{file_id}", responses=ERRORS)
async def delete_file(file_id: str, owner: Owner, service: Service) -> dict[str, Any]:
    return await service.delete_file(owner, file_id)


@batch_router.post("/v1/batches", responses=ERRORS)
async def create_batch(body: BatchCreate, owner: Owner, service: Service) -> dict[str, Any]:
    """Create a batch from an uploaded file; its lines are validated before it runs."""
    return await service.create(owner, body.input_file_id, body.endpoint, body.completion_window, body.metadata)


@batch_router.get("/v1/batches", responses=ERRORS)
async def list_batches(
    owner: Owner, service: Service, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
) -> dict[str, Any]:
    return await service.list(owner, limit, after)


@batch_router.get("/v1/batches/{batch_id}", responses=ERRORS)
async def get_batch(batch_id: str, owner: Owner, service: Service) -> dict[str, Any]:
    return await service.get(owner, batch_id)


@batch_router.post("/v1/batches/{batch_id}/cancel", responses=ERRORS)
async def cancel_batch(batch_id: str, owner: Owner, service: Service) -> dict[str, Any]:
    return await service.cancel(owner, batch_id)


_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE"}


def _refuse_others(path: str, allowed: set[str]) -> None:
    """Answer 405 naming every method ``path`` has: where two routes share a path, the
    router's own 405 names only the first route's."""

    async def refuse() -> None:
        raise StarletteHTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})

    batch_router.add_api_route(path, refuse, methods=sorted(_METHODS - allowed), include_in_schema=False)


_refuse_others("/v1/files", {"GET", "POST"})
_refuse_others("/v1/files/{file_id}", {"GET", "DELETE"})
_refuse_others("/v1/batches", {"GET", "POST"})

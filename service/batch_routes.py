"""Thin HTTP handlers of batch jobs: ``/v1/files`` and ``/v1/batches``, as OpenAI's Batch API."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from service.errors import ErrorKind, JudgeError
from service.serving.batches import BatchService

batch_router = APIRouter(tags=["batches"])
_bearer = HTTPBearer(auto_error=False, description="An API key, when the server has keys configured.")
# Multipart framing around the file: headers, boundaries and the purpose field.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


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
    endpoint: str
    completion_window: str = "24h"
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


@batch_router.post("/v1/files")
async def upload_file(
    request: Request,
    owner: Owner,
    service: Service,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
) -> dict[str, Any]:
    """Upload a JSONL file of requests (``purpose=batch``)."""
    limit = service.settings.jobs_max_file_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + UPLOAD_OVERHEAD_BYTES:
        raise JudgeError(ErrorKind.PAYLOAD_TOO_LARGE, f"the file exceeds {limit} bytes", {"jobs_max_file_bytes": limit})
    content = await _read_bounded(file, limit)
    return await service.add_file(owner, file.filename or "upload.jsonl", purpose, content)


@batch_router.get("/v1/files")
async def list_files(owner: Owner, service: Service) -> dict[str, Any]:
    return await service.list_files(owner)


@batch_router.get("/v1/files/{file_id}")
async def get_file(file_id: str, owner: Owner, service: Service) -> dict[str, Any]:
    return await service.get_file(owner, file_id)


@batch_router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, owner: Owner, service: Service) -> Response:
    return Response(await service.file_content(owner, file_id), media_type="application/jsonl")


@batch_router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, owner: Owner, service: Service) -> dict[str, Any]:
    return await service.delete_file(owner, file_id)


@batch_router.post("/v1/batches")
async def create_batch(body: BatchCreate, owner: Owner, service: Service) -> dict[str, Any]:
    """Create a batch from an uploaded file; its lines are validated before it runs."""
    return await service.create(owner, body.input_file_id, body.endpoint, body.completion_window, body.metadata)


@batch_router.get("/v1/batches")
async def list_batches(
    owner: Owner, service: Service, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
) -> dict[str, Any]:
    return await service.list(owner, limit, after)


@batch_router.get("/v1/batches/{batch_id}")
async def get_batch(batch_id: str, owner: Owner, service: Service) -> dict[str, Any]:
    return await service.get(owner, batch_id)


@batch_router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, owner: Owner, service: Service) -> dict[str, Any]:
    return await service.cancel(owner, batch_id)

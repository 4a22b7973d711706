"""The requests of the batch-job calls and how their answers are read, once for both clients:
each call is a ``BatchCall`` that the blocking and the asynchronous client send their own way."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from judge_client.batches import Batch, FileObject

T = TypeVar("T")
# A batch's metadata: up to 16 string pairs the service keeps and answers back.
Metadata = Mapping[str, str] | None


@dataclass(frozen=True)
class BatchCall(Generic[T]):
    """One HTTP request and the reading of its answer's body (JSON, or the bytes when ``raw``).
    A call that creates something (``idempotent=False``) is sent again only after a 429 or 503."""

    method: str
    path: str
    read: Callable[[Any], T]
    idempotent: bool = True
    raw: bool = False
    content: dict[str, Any] = field(default_factory=dict)


def _batch(body: Any) -> Batch:
    return Batch.model_validate(body)


def _batches(page: Any) -> list[Batch]:
    return [Batch.model_validate(entry) for entry in page["data"]]


def _bytes(content: Any) -> bytes:
    return bytes(content)


def upload(path: str | Path) -> BatchCall[FileObject]:
    # The bytes, not an open file: a retry after a 429 or 503 sends them again whole.
    files = {"file": (Path(path).name, Path(path).read_bytes(), "application/jsonl")}
    content = {"files": files, "data": {"purpose": "batch"}}
    return BatchCall("POST", "/v1/files", FileObject.model_validate, idempotent=False, content=content)


def create(input_file_id: str, endpoint: str, completion_window: str, metadata: Metadata) -> BatchCall[Batch]:
    body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint}
    body["completion_window"] = completion_window
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return BatchCall("POST", "/v1/batches", _batch, idempotent=False, content={"json": body})


def retrieve(batch_id: str) -> BatchCall[Batch]:
    return BatchCall("GET", f"/v1/batches/{batch_id}", _batch)


def cancel(batch_id: str) -> BatchCall[Batch]:
    # Cancelling twice is cancelling once: safe to send again after a failed connection.
    return BatchCall("POST", f"/v1/batches/{batch_id}/cancel", _batch)


def listing(limit: int, after: str | None) -> BatchCall[list[Batch]]:
    params: dict[str, Any] = {"limit": limit} | ({"after": after} if after else {})
    return BatchCall("GET", "/v1/batches", _batches, content={"params": params})


def file_content(file_id: str) -> BatchCall[bytes]:
    return BatchCall("GET", f"/v1/files/{file_id}/content", _bytes, raw=True)

"""What the jobs keep, and the store interface every backend implements.

Files keep their bytes in the store itself (a BLOB), so one database is all a replica
needs; a batch's lines are copied into ``items`` when it is created, so deleting its
input file later changes nothing. Work is claimed a chunk at a time with a lease; a
result is written only while its item is still pending, so a line answered twice (a
lease that ran out under a slow worker) still appears once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

# Statuses after which a batch never changes again.
TERMINAL = ("completed", "failed", "expired", "cancelled")


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def request_id(batch_id: str, line: int) -> str:
    """The output line's ``id``: fixed per (batch, line), so a rebuilt output file is the same."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


def now_s() -> int:
    return int(time.time())


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(frozen=True)
class BatchRecord:
    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    expires_at: int
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    times: dict[str, int | None] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        stamps = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            **{f"{name}_at": self.times.get(name) for name in stamps},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class ItemRow:
    """One line of a batch, as stored at creation."""

    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """A chunk leased to one worker: its batch and its lines still pending."""

    batch_id: str
    chunk: int
    endpoint: str
    expires_at: int
    items: tuple[ItemRow, ...]


@dataclass(frozen=True)
class Due:
    """A batch the worker must move on: ``to`` is the status it goes to."""

    batch_id: str
    status: str
    to: str


class Store(Protocol):
    """The jobs' durable state; every method is blocking (the worker calls it in a thread)."""

    def add_file(self, record: FileRecord, content: bytes) -> None: ...
    def get_file(self, file_id: str, owner: str) -> FileRecord | None: ...
    def file_content(self, file_id: str, owner: str) -> bytes | None: ...
    def list_files(self, owner: str) -> list[FileRecord]: ...
    def delete_file(self, file_id: str, owner: str) -> bool: ...

    def add_batch(self, record: BatchRecord, items: list[ItemRow], chunk_items: int) -> None: ...
    def get_batch(self, batch_id: str, owner: str) -> BatchRecord | None: ...
    def list_batches(self, owner: str, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]: ...
    def cancel_batch(self, batch_id: str, owner: str) -> BatchRecord | None: ...

    def claim(self, worker: str, lease_s: float) -> Claim | None: ...
    def renew(self, claim: Claim, worker: str, lease_s: float) -> bool: ...
    def record(self, batch_id: str, line: int, status_code: int, body: dict[str, Any]) -> bool: ...
    def release(self, claim: Claim, worker: str) -> None: ...
    def due(self, stale_s: float) -> list[Due]: ...
    def finalize(self, due: Due) -> bool: ...
    def purge(self, older_than: int) -> int: ...
    def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...

"""Files and batches (the OpenAI Batch API's shape): the store behind the routes, and
the jobs worker the app's lifespan runs."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from service.config import Settings
from service.core.errors import ErrorKind, JudgeError
from service.jobs.backend import open_store
from service.jobs.lines import ENDPOINTS, count_lines, parse
from service.jobs.store import BatchRecord, FileRecord, Store, new_id, now_s
from service.jobs.worker import Worker
from service.serving.runtime import Runtime

logger = logging.getLogger(__name__)

_WINDOW = re.compile(r"^([1-9][0-9]*)([smh])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
# OpenAI's own window is 24h; shorter ones serve tests and tight jobs, longer ones are refused.
MAX_WINDOW_S = 7 * 24 * 3600


def window_seconds(window: str) -> int:
    match = _WINDOW.match(window)
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_WINDOW_S:
        raise JudgeError(
            ErrorKind.INVALID_REQUEST,
            "completion_window must be a duration such as '24h' (at most 168h)",
            {"completion_window": window},
        )
    return seconds


def _not_found(what: str, ident: str) -> JudgeError:
    return JudgeError(ErrorKind.NOT_FOUND, f"no {what} {ident!r}", {"id": ident})


class BatchService:
    """The jobs' API; every call takes the caller's owner tag (its key's hash)."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime
        self._store: Store | None = None
        self.worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise JudgeError(ErrorKind.UNAVAILABLE, "batch jobs are unavailable: the job store is not open")
        return self._store

    async def start(self) -> None:
        """Open the store and start the worker. An embedded store that cannot open leaves
        jobs off (503), the rest serving; a configured database that cannot be reached
        stops startup, since every replica depends on it."""
        s = self.settings
        try:
            self._store = await asyncio.to_thread(open_store, s)
        except Exception as exc:
            if s.jobs_database_url is not None:
                logger.error("batch jobs: %s; startup stops", exc)
                raise
            logger.exception("the job store did not open; batch jobs are off")
            return
        metrics = self.runtime.metrics
        self.worker = Worker(
            self._store,
            self.runtime,
            lease_s=s.jobs_lease_s,
            concurrency=s.jobs_concurrency,
            retention_s=s.jobs_retention_hours * 3600,
            on_line=lambda status: metrics.batch_items.labels(outcome="completed" if status == 200 else "failed").inc(),
        )
        metrics.jobs.source = self._store.counts
        self._task = asyncio.create_task(self.worker.run(), name="jobs-worker")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.worker is not None:
            await self.worker.close()
        if self._store is not None:
            self.runtime.metrics.jobs.source = None
            self._store.close()

    # Files ----------------------------------------------------------------------------
    async def add_file(self, owner: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        if purpose != "batch":
            raise JudgeError(ErrorKind.INVALID_REQUEST, "purpose must be 'batch'", {"purpose": purpose})
        limit = self.settings.jobs_max_file_bytes
        if len(content) > limit:
            raise JudgeError(
                ErrorKind.PAYLOAD_TOO_LARGE, f"the file exceeds {limit} bytes", {"jobs_max_file_bytes": limit}
            )
        lines = count_lines(content)
        if lines > self.settings.jobs_max_lines:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"the file holds {lines} requests; the limit is {self.settings.jobs_max_lines}",
                {"lines": lines, "jobs_max_lines": self.settings.jobs_max_lines},
            )
        record = FileRecord(new_id("file-"), owner, filename, purpose, len(content), now_s())
        await asyncio.to_thread(self.store.add_file, record, content)
        return record.wire()

    async def get_file(self, owner: str, file_id: str) -> dict[str, Any]:
        record = await asyncio.to_thread(self.store.get_file, file_id, owner)
        if record is None:
            raise _not_found("file", file_id)
        return record.wire()

    async def list_files(self, owner: str) -> dict[str, Any]:
        records = await asyncio.to_thread(self.store.list_files, owner)
        return {"object": "list", "data": [r.wire() for r in records], "has_more": False}

    async def file_content(self, owner: str, file_id: str) -> bytes:
        content = await asyncio.to_thread(self.store.file_content, file_id, owner)
        if content is None:
            raise _not_found("file", file_id)
        return content

    async def delete_file(self, owner: str, file_id: str) -> dict[str, Any]:
        if not await asyncio.to_thread(self.store.delete_file, file_id, owner):
            raise _not_found("file", file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # Batches --------------------------------------------------------------------------
    async def create(
        self, owner: str, input_file_id: str, endpoint: str, window: str, metadata: dict[str, str] | None
    ) -> dict[str, Any]:
        """Validate the input file's every line; create the batch running, or failed with
        the lines' errors and nothing to run."""
        if endpoint not in ENDPOINTS:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST, f"endpoint must be one of {', '.join(ENDPOINTS)}", {"endpoint": endpoint}
            )
        seconds = window_seconds(window)
        store = self.store
        source = await asyncio.to_thread(store.get_file, input_file_id, owner)
        content = await asyncio.to_thread(store.file_content, input_file_id, owner)
        if source is None or content is None:
            raise _not_found("file", input_file_id)
        if source.purpose != "batch":
            raise JudgeError(ErrorKind.INVALID_REQUEST, "the input file's purpose must be 'batch'", {"id": source.id})
        items, errors = await asyncio.to_thread(parse, content, endpoint)
        created = now_s()
        status = "failed" if errors else "in_progress"
        record = BatchRecord(
            id=new_id("batch_"), owner=owner, endpoint=endpoint, input_file_id=input_file_id,
            completion_window=window, status=status, created_at=created, expires_at=created + seconds,
            total=0 if errors else len(items), errors=errors or None, metadata=metadata,
            times={"failed" if errors else "in_progress": created},
        )  # fmt: skip
        await asyncio.to_thread(store.add_batch, record, [] if errors else items, self.settings.jobs_chunk_items)
        if self.worker is not None:
            self.worker.wake.set()
        return record.wire()

    async def get(self, owner: str, batch_id: str) -> dict[str, Any]:
        record = await asyncio.to_thread(self.store.get_batch, batch_id, owner)
        if record is None:
            raise _not_found("batch", batch_id)
        return record.wire()

    async def list(self, owner: str, limit: int, after: str | None) -> dict[str, Any]:
        records, more = await asyncio.to_thread(self.store.list_batches, owner, limit, after)
        data = [r.wire() for r in records]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    async def cancel(self, owner: str, batch_id: str) -> dict[str, Any]:
        record = await asyncio.to_thread(self.store.cancel_batch, batch_id, owner)
        if record is None:
            raise _not_found("batch", batch_id)
        if record.status not in ("cancelling", "cancelled"):
            raise JudgeError(
                ErrorKind.INVALID_REQUEST, f"a batch that is {record.status} cannot be cancelled", {"id": batch_id}
            )
        if self.worker is not None:
            self.worker.wake.set()
        return record.wire()

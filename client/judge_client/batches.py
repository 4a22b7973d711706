"""Batch jobs (the OpenAI Batch API's shape): the uploaded file and the batch as the
service answers them. Statuses run ``validating`` -> ``in_progress`` -> ``finalizing`` ->
``completed``, or end in ``failed``, ``expired`` or ``cancelled`` (through ``cancelling``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from judge_client.fields import _Response

BatchStatus = Literal[
    "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"
]
# A batch in one of these statuses changes no more.
FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


class FileObject(_Response):
    """An uploaded file (``purpose="batch"``: a JSONL file of requests)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str


class BatchRequestCounts(_Response):
    total: int
    completed: int
    failed: int


class Batch(_Response):
    """A batch job: its status, its counts and, once it ends, its output and error files."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: dict[str, Any] | None = Field(None, description="Validation errors: {'data': [{'line', 'message'}...]}.")
    created_at: int
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES

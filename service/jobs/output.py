"""The output and error files of a finished batch, in OpenAI's line format."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from service.jobs.store import request_id

# What an unanswered line says when its batch ended early, by the batch's final status.
UNFINISHED = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


def output_files(
    batch_id: str, status: str, rows: Iterable[tuple[int, str, str, int | None, str | None]]
) -> tuple[bytes, bytes]:
    """(output, errors) from ``rows`` of (line, custom_id, state, status_code, response JSON),
    in line order: answers of 200 go to the output file, other answers and lines never
    answered to the error file; every line appears in exactly one of them."""
    out: list[str] = []
    err: list[str] = []
    for line, custom_id, state, status_code, response in rows:
        record: dict[str, Any] = {"id": request_id(batch_id, line), "custom_id": custom_id}
        if state == "done" and status_code is not None and response is not None:
            record["response"] = {"status_code": status_code, "body": json.loads(response)}
            record["error"] = None
            (out if status_code == 200 else err).append(json.dumps(record, separators=(",", ":")))
        else:
            code, message = UNFINISHED.get(status, ("batch_failed", "This request was not executed."))
            record["response"] = None
            record["error"] = {"code": code, "message": message}
            err.append(json.dumps(record, separators=(",", ":")))
    return _jsonl(out), _jsonl(err)


def _jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() if lines else b""

"""An input file's lines: each a request, or the reason it is not one.

A line that is not a request at all fails the whole batch, as OpenAI's validation does;
a request whose body its endpoint would refuse is not checked here: it is answered like
the endpoint, in the error file.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from service.jobs.store import ItemRow

Endpoint = Literal["/v1/score", "/v1/compare", "/v1/rank"]
ENDPOINTS: tuple[str, ...] = get_args(Endpoint)
# Errors listed on a failed batch; a file broken throughout needs no more to be fixed.
MAX_ERRORS = 100


def parse(content: bytes, endpoint: str) -> tuple[list[ItemRow], list[dict[str, Any]]]:
    """The file's requests, and its errors (``line`` counts from 1, as an editor does)."""
    items: list[ItemRow] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        item, error = _line(raw, number, endpoint, seen)
        if error is not None:
            if len(errors) < MAX_ERRORS:
                errors.append(error)
        elif item is not None:
            items.append(item)
    if not items and not errors:
        errors.append(_error("empty_file", 0, "the input file holds no requests", None))
    return items, errors


def _line(raw: bytes, number: int, endpoint: str, seen: set[str]) -> tuple[ItemRow | None, dict[str, Any] | None]:
    try:
        request = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, _error("invalid_json_line", number, "this line is not valid JSON", None)
    if not isinstance(request, dict):
        return None, _error("invalid_request", number, "a request line must be a JSON object", None)
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, _error("missing_custom_id", number, "custom_id must be a non-empty string", "custom_id")
    if custom_id in seen:
        return None, _error(
            "duplicate_custom_id", number, f"custom_id {custom_id!r} appears more than once", "custom_id"
        )
    seen.add(custom_id)
    if request.get("method") != "POST":
        return None, _error("invalid_method", number, "method must be POST", "method")
    url = request.get("url")
    if url not in ENDPOINTS:
        return None, _error("invalid_url", number, f"url must be one of {', '.join(ENDPOINTS)}", "url")
    if url != endpoint:
        return None, _error("mismatched_endpoint", number, f"url {url} differs from the batch's endpoint", "url")
    body = request.get("body")
    if not isinstance(body, dict):
        return None, _error("invalid_body", number, "body must be a JSON object", "body")
    return ItemRow(number, custom_id, body), None


def _error(code: str, line: int, message: str, param: str | None) -> dict[str, Any]:
    return {"code": code, "line": line or None, "message": message, "param": param}


def count_lines(content: bytes) -> int:
    return sum(1 for raw in content.split(b"\n") if raw.strip())

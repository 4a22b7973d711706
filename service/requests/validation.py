"""What a request that fails validation is told: the fields at fault and why, as one
``invalid_request`` error; the HTTP handler and the batch lines answer with it alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.core.errors import ErrorKind, JudgeError

# The tag of the score request's union (raw or structured) is not part of the body.
_UNION_TAGS = {"raw", "structured"}


def _validation_details(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # Only location, message and type: pydantic's 'input' and 'ctx' may echo large
    # or internal values back to the client.
    details = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if len(loc) > 1 and loc[0] == "body" and loc[1] in _UNION_TAGS:
            del loc[1]
        details.append({"loc": loc, "msg": err.get("msg", ""), "type": err.get("type", "")})
    return details


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> JudgeError:
    """The error for FastAPI's validation ``errors`` (each located under ``body``)."""
    details = _validation_details(errors)
    fields = sorted({".".join(d["loc"][1:]) or d["loc"][0] for d in details if d["loc"]})
    reasons = sorted({d["msg"] for d in details if d["type"] in ("mixed_items", "value_error")})
    message = "invalid request: " + ", ".join(fields) if fields else "invalid request"
    if reasons:
        message += " (" + "; ".join(reasons) + ")"
    return JudgeError(ErrorKind.INVALID_REQUEST, message, details)

"""The OpenAPI schema, with the limits of this deployment written in.

FastAPI derives the schema from the wire models; the per-request limits on items,
criteria and rank candidates, the longest critique and the chat-template keys allowed are
settings, so they are added here, where the app knows its settings. A client generated
from ``/openapi.json`` then cannot build a request with too many of them, too long a
critique or a chat-template key the server refuses.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.config import Settings

# Wire models whose list of entries is bounded by JUDGE_MAX_ITEMS.
_BOUNDED_LISTS = {"RawScoreRequest": "items", "StructuredScoreRequest": "items", "CompareRequest": "pairs"}
# Wire models that pass chat-template arguments, whose keys are a setting.
_CHAT_TEMPLATE_MODELS = ("StructuredScoreRequest", "CompareRequest")


def _bound(schema: dict[str, Any], keyword: str, limit: Any) -> None:
    """Write a deployment's limit into a field's schema (in its non-null branch, if any)."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") != "null":
            branch[keyword] = limit


def _headers_are_never_null(schema: dict[str, Any]) -> None:
    """An optional header is absent or a value: HTTP has no null header, so the schema must
    not offer one (FastAPI derives ``anyOf: [T, null]`` from ``T | None``)."""
    for operation in (op for path in schema.get("paths", {}).values() for op in path.values()):
        for parameter in operation.get("parameters", []):
            branches = parameter.get("schema", {}).get("anyOf")
            if parameter.get("in") == "header" and branches:
                kept = [b for b in branches if b.get("type") != "null"]
                if len(kept) == 1:
                    parameter["schema"] = {**{k: v for k, v in parameter["schema"].items() if k != "anyOf"}, **kept[0]}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.get("components", {}).get("schemas", {})
            for model, field in _BOUNDED_LISTS.items():
                components[model]["properties"][field]["maxItems"] = settings.max_items
            _bound(
                components["StructuredScoreRequest"]["properties"]["rubrics"], "maxProperties", settings.max_criteria
            )
            _bound(components["RankRequest"]["properties"]["candidates"], "maxItems", settings.max_rank_candidates)
            components["CritiqueSpec"]["properties"]["max_tokens"]["maximum"] = settings.max_critique_tokens
            keys = settings.chat_template_keys
            for model in _CHAT_TEMPLATE_MODELS:
                kwargs = components[model]["properties"]["chat_template_kwargs"]
                if keys:
                    _bound(kwargs, "propertyNames", {"enum": keys})
                else:
                    _bound(kwargs, "maxProperties", 0)
            _headers_are_never_null(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

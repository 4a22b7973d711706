"""The OpenAPI schema, with the limits of this deployment written in.

FastAPI derives the schema from the wire models; the per-request item limit is a
setting, so it is added here, where the app knows its settings. A client generated from
``/openapi.json`` then cannot build a request with too many items.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.config import Settings

# Wire models whose list of entries is bounded by JUDGE_MAX_ITEMS.
_BOUNDED_LISTS = {"RawScoreRequest": "items", "StructuredScoreRequest": "items", "CompareRequest": "pairs"}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.get("components", {}).get("schemas", {})
            for model, field in _BOUNDED_LISTS.items():
                components[model]["properties"][field]["maxItems"] = settings.max_items
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

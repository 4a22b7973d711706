"""Pages for people: the interactive docs and the playground, every asset served from the
installed packages so they work in clusters without internet access."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, get_args

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from judge_client.protocol import Method, Template

from service.core.errors import ErrorKind, JudgeError
from service.requests.presets import PRESETS
from service.requests.prompts import DEFAULT_PAIR_CRITERIA, DEFAULT_RUBRIC, Rubric

# Swagger UI and ReDoc bundles as shipped (and pinned) by the fastapi-offline package.
DOCS_ASSETS = Path(str(importlib.resources.files("fastapi_offline") / "static"))
PLAYGROUND_ASSETS = Path(__file__).parent / "static" / "playground"

_DOCS_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
_PLAYGROUND_FILES = ("playground.js", "batches.js", "playground.css")
# What the playground's critique fields hold for a template without a critique of its own.
PLAYGROUND_CRITIQUE_TOKENS = 64
PLAYGROUND_MARKER = "Score:"

# Our own page loads only its own files and talks only to this server; the browser enforces it.
PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
# The docs pages start Swagger UI with an inline script and both bundles inline styles; ReDoc's
# sidebar shows a logo from its vendor's CDN, which this keeps in the browser (it then hides it).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _root(request: Request) -> str:
    # Behind a proxy that strips a prefix, the page must ask for assets under that prefix.
    return str(request.scope.get("root_path", "")).rstrip("/")


def _asset(directory: Path, allowed: tuple[str, ...], name: str) -> FileResponse:
    # A fixed list, not a directory listing: no path from the URL ever reaches the filesystem.
    if name not in allowed:
        raise JudgeError(ErrorKind.NOT_FOUND, "not found")
    return FileResponse(directory / name, headers={"Cache-Control": "no-cache"})


def _rubric(rubric: Rubric) -> dict[str, Any]:
    # Label-description pairs, not an object: a browser would put integer-like keys first.
    return {"criteria": rubric.criteria, "score_descriptions": [list(pair) for pair in rubric.score_descriptions]}


def playground_templates(max_critique_tokens: int) -> list[dict[str, Any]]:
    """Each template the API accepts, with the rubric and critique it uses when a request
    gives none (a preset's critique within the server's longest)."""
    templates = []
    for name in get_args(Template):
        preset = PRESETS.get(name)
        critique = None
        if preset is not None:
            max_tokens, marker = preset.critique(max_critique_tokens)
            critique = {"max_tokens": max_tokens, "marker": marker}
        rubric = preset.rubric if preset is not None else DEFAULT_RUBRIC
        templates.append({"name": name, "rubric": _rubric(rubric), "critique": critique})
    return templates


def pages_router(playground: bool) -> APIRouter:
    """/docs and /redoc always; /playground only when ``playground`` is on."""
    router = APIRouter(include_in_schema=False)
    _add_docs(router)
    if playground:
        _add_playground(router)
    return router


def _add_docs(router: APIRouter) -> None:
    """Swagger UI and ReDoc, with their assets served locally."""

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_swagger_ui_html(
            openapi_url=f"{root}{request.app.openapi_url}",
            title=f"{request.app.title} - Swagger UI",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon.png",
            # Swagger UI would otherwise send the schema's URL to a public validator.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_redoc_html(
            openapi_url=f"{root}{request.app.openapi_url}",
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=f"{root}/docs/assets/redoc.standalone.js",
            redoc_favicon_url=f"{root}/docs/assets/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @router.get("/docs/assets/{name}")
    async def docs_asset(name: str) -> FileResponse:
        return _asset(DOCS_ASSETS, _DOCS_FILES, name)


def _add_playground(router: APIRouter) -> None:
    """The playground's page, its configuration and its assets."""

    @router.get("/playground")
    async def playground_page() -> FileResponse:
        return FileResponse(
            PLAYGROUND_ASSETS / "index.html",
            headers={"Content-Security-Policy": PLAYGROUND_CSP, "Cache-Control": "no-cache"},
        )

    @router.get("/playground/config.json")
    async def playground_config(request: Request) -> dict[str, Any]:
        # Open like the page: it tells whether to ask for a key, which a 401 would tell anyway.
        max_critique_tokens = request.app.state.settings.max_critique_tokens
        return {
            "auth_required": request.app.state.api_keys.enabled,
            "methods": list(get_args(Method)),
            "templates": playground_templates(max_critique_tokens),
            "critique": {
                "max_tokens": min(PLAYGROUND_CRITIQUE_TOKENS, max_critique_tokens),
                "marker": PLAYGROUND_MARKER,
                "max_tokens_limit": max_critique_tokens,
            },
            "pair_criteria": DEFAULT_PAIR_CRITERIA,
        }

    @router.get("/playground/{name}")
    async def playground_asset(name: str) -> FileResponse:
        return _asset(PLAYGROUND_ASSETS, _PLAYGROUND_FILES, name)

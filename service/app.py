"""App factory: settings in, a FastAPI app with its lifespan out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service import __version__
from service.auth import ApiKeys
from service.config import Settings
from service.errors import install_error_handlers
from service.judge import Judge
from service.logs import RequestContext
from service.metrics import Metrics
from service.middleware import BodyLimit, RequestMetrics
from service.pages import pages_router
from service.routes import router

logger = logging.getLogger(__name__)


def create_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    """Build the app. The model loads in the background after startup; /ready says when."""
    metrics = metrics or Metrics()
    judge = Judge(settings, metrics)

    async def watch_engine() -> None:
        # A dead engine cannot recover in-process: stop admitting (503), then ask the
        # server to exit so the orchestrator restarts the pod; the exit code says why.
        while judge.alive:
            await asyncio.sleep(0.5)
        logger.error("the judge engine died; draining and exiting")
        judge.exit_code = 1
        judge.begin_drain()
        app.state.request_exit()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(judge.load(), name="load-judge"),
            asyncio.create_task(watch_engine(), name="watch-engine"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await judge.shutdown()

    app = FastAPI(
        title="Judge scoring service",
        version=__version__,
        description="LLM-as-a-judge scoring: label distributions, expected scores and confidence.",
        lifespan=lifespan,
        # Served by service.pages from the installed packages instead of a public CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.judge = judge
    # Replaced by whoever runs the server (the CLI, the tests) with a way to stop it.
    app.state.request_exit = lambda: None
    app.state.api_keys = ApiKeys.from_settings(settings.api_keys, settings.api_keys_file)
    if not app.state.api_keys.enabled:
        logger.warning(
            "NO API KEYS CONFIGURED: /v1/score accepts requests from anyone. "
            "Set JUDGE_API_KEYS or JUDGE_API_KEYS_FILE to require a bearer key."
        )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(pages_router(settings.playground))
    # Outermost first: metrics see every status, including the body limit's 413.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(RequestContext)
    return app

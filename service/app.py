"""App factory: settings in, a FastAPI app with its lifespan out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service import __version__
from service.config import Settings
from service.http.auth import ApiKeys
from service.http.batch_routes import batch_router
from service.http.errors import install_error_handlers
from service.http.middleware import BodyLimit, RequestMetrics
from service.http.openapi import install_openapi
from service.http.pages import pages_router
from service.http.routes import router
from service.jobs.batches import BatchService
from service.observability.logs import RequestContext
from service.observability.metrics import Metrics
from service.serving import CompareService, RankService, ScoreService
from service.serving.assets import ReadoutAssets
from service.serving.lifecycle import Lifecycle
from service.serving.runtime import Runtime

logger = logging.getLogger(__name__)


def create_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    """Build the app. The model loads in the background after startup; /ready says when."""
    # First: a key file that gives no key stops startup (KeysFileError) before anything loads.
    api_keys = ApiKeys.from_settings(settings.api_keys, settings.api_keys_file)
    metrics = metrics or Metrics()
    lifecycle = Lifecycle(settings, metrics)
    runtime = Runtime(settings, metrics, ReadoutAssets.load(settings), lifecycle)
    batches = BatchService(settings, runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First: a job database that cannot be reached stops startup before the model loads.
        await batches.start()
        tasks = [
            asyncio.create_task(runtime.start(), name="start-runtime"),
            asyncio.create_task(lifecycle.exit_when_dead(), name="watch-runtime"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Batch work first: its lines stay pending in the store, and online work drains alone.
            await batches.close()
            await runtime.shutdown()

    app = FastAPI(
        title="Judge scoring service",
        version=__version__,
        description="LLM-as-a-judge scoring: label distributions, expected scores and confidence.",
        lifespan=lifespan,
        # Served by service.http.pages from the installed packages instead of a public CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.lifecycle = lifecycle
    # The runtime runs online tasks itself: through its queue, with admission.
    app.state.score_service = ScoreService(runtime, runtime.online)
    app.state.compare_service = CompareService(runtime, runtime.online)
    app.state.rank_service = RankService(runtime, runtime.online)
    app.state.batch_service = batches
    app.state.api_keys = api_keys
    if not app.state.api_keys.enabled:
        logger.warning(
            "NO API KEYS CONFIGURED: /v1/score accepts requests from anyone. "
            "Set JUDGE_API_KEYS or JUDGE_API_KEYS_FILE to require a bearer key."
        )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(batch_router)
    app.include_router(pages_router(settings.playground))
    install_openapi(app, settings)
    # Outermost first: metrics see every status, including the body limit's 413.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt=("/v1/files",))
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(RequestContext)
    return app

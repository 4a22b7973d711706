"""How a command reaches the judge: a running service through the client (``--url``),
or the one in-process judge every command shares.

Either way the command gets a ``JudgeHandle`` whose calls take and return the wire
models, and whose failures are ``JudgeFailed`` with the HTTP status the service would
give, so commands never care which they use.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from judge_client.protocol import (
    CompareRequest,
    CompareResponse,
    RawScoreRequest,
    ScoreResponse,
    StructuredScoreRequest,
)

from service.config import Settings
from service.serving.runtime import Runtime

ScoreRequest = RawScoreRequest | StructuredScoreRequest


class JudgeFailed(Exception):
    """The judge refused or failed a request: ``status`` as over HTTP, and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class JudgeHandle:
    score: Callable[[ScoreRequest], Awaitable[ScoreResponse]]
    compare: Callable[[CompareRequest], Awaitable[CompareResponse]]
    model: str
    max_items: int


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="score through a running service; default: in-process")
    parser.add_argument("--api-key", help="bearer API key for --url")
    parser.add_argument("--retries", type=int, default=5, help="--url: retries of a 429, 503 or failed connection")
    parser.add_argument("--model", help="JUDGE_MODEL for in-process scoring")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")


def open_from_args(args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[JudgeHandle]:
    settings = None if args.url else in_process_settings(args.model)
    return open_judge(settings, url=args.url, api_key=args.api_key, retries=args.retries, concurrency=args.concurrency)


def in_process_settings(model: str | None = None, **overrides: Any) -> Settings:
    """Settings of an in-process judge: long deadlines (a command waits for its answers)."""
    if model:
        overrides["model"] = model
    return Settings(request_timeout_s=3600, max_request_timeout_s=3600, **overrides)


@contextlib.asynccontextmanager
async def open_judge(
    settings: Settings | None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    retries: int = 5,
    concurrency: int = 4,
) -> AsyncIterator[JudgeHandle]:
    """A judge over HTTP (``url``) or in this process (``settings``), closed on exit."""
    if url:
        async with _remote(url, api_key, retries, concurrency) as handle:
            yield handle
        return
    assert settings is not None
    async with _local(settings) as handle:
        yield handle


@contextlib.asynccontextmanager
async def _remote(url: str, api_key: str | None, retries: int, concurrency: int) -> AsyncIterator[JudgeHandle]:
    from judge_client import AsyncJudgeClient, JudgeError

    async with AsyncJudgeClient(url, api_key=api_key, retries=retries, concurrency=concurrency, timeout=3600) as client:

        async def score(request: ScoreRequest) -> ScoreResponse:
            try:
                return await client.score(request)
            except JudgeError as exc:
                raise JudgeFailed(exc.status, exc.message) from exc

        async def compare(request: CompareRequest) -> CompareResponse:
            try:
                return await client.compare(request)
            except JudgeError as exc:
                raise JudgeFailed(exc.status, exc.message) from exc

        try:
            model, max_items = await client.model(), await client.max_items()
        except JudgeError as exc:
            raise JudgeFailed(exc.status, exc.message) from exc
        yield JudgeHandle(score, compare, model, max_items)


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """The in-process judge: a started runtime, shut down on exit (also after a failed
    start, so no engine or vLLM child process outlives the command)."""
    from service.observability.metrics import Metrics

    runtime = Runtime(settings, Metrics())
    try:
        await runtime.start()
        if not runtime.lifecycle.ready:
            raise JudgeFailed(503, "the judge model failed to load; see the log above")
        yield runtime
    finally:
        await runtime.shutdown()


@contextlib.asynccontextmanager
async def _local(settings: Settings) -> AsyncIterator[JudgeHandle]:
    from service.core.errors import JudgeError
    from service.serving import CompareService, ScoreService

    async with open_runtime(settings) as runtime:
        scorer, comparer = ScoreService(runtime, runtime.online), CompareService(runtime, runtime.online)

        async def score(request: ScoreRequest) -> ScoreResponse:
            try:
                return await scorer.serve(request, None, None)
            except JudgeError as exc:
                raise JudgeFailed(exc.kind.status, exc.message) from exc

        async def compare(request: CompareRequest) -> CompareResponse:
            try:
                return await comparer.serve(request, None, None)
            except JudgeError as exc:
                raise JudgeFailed(exc.kind.status, exc.message) from exc

        yield JudgeHandle(score, compare, settings.model, settings.max_items)

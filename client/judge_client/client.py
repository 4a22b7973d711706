"""Python clients for the service: ``JudgeClient`` and ``AsyncJudgeClient`` on httpx.

Results are the wire models of ``judge_client.protocol``. Large item lists are split into
chunks of the server's ``max_items``; 429 and 503 answers, and connections that fail, are
retried with exponential backoff that honours ``Retry-After``. One pooled connection set
per client; use it as a context manager.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from judge_client import batch_calls
from judge_client.batch_calls import BatchCall, Metadata
from judge_client.protocol import (
    Batch,
    CompareRequest,
    CompareResponse,
    FileObject,
    RankRequest,
    RankResponse,
    ScoreResponse,
)

T = TypeVar("T")
RETRY_STATUSES = {429, 503}
# The longest a client sleeps before one retry, whatever Retry-After or the backoff says.
MAX_RETRY_DELAY_S = 60.0


class JudgeError(Exception):
    """The service answered with an error: ``status``, ``type``, ``message`` and ``details``."""

    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.type = error.get("type", "http_error")
        self.message = error.get("message", str(body)[:200])
        self.details = error.get("details")
        super().__init__(f"{status} {self.type}: {self.message}")


def _payload(request: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(request, BaseModel):
        return request.model_dump(exclude_none=True)
    return dict(request)


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A request's other fields; a model among them (``critique=CritiqueSpec(...)``) as its JSON."""
    return {name: _payload(value) if isinstance(value, BaseModel) else value for name, value in options.items()}


def _request(entries: Sequence[Mapping[str, Any]] | BaseModel, key: str, options: dict[str, Any]) -> dict[str, Any]:
    if isinstance(entries, BaseModel):
        return _payload(entries)
    return {key: [_payload(entry) for entry in entries], **_options(options)}


def _rank_payload(
    candidates: Sequence[Mapping[str, Any]] | BaseModel, instruction: str | None, options: dict[str, Any]
) -> dict[str, Any]:
    # One request: a ranking needs all its candidates together, so it is never split.
    if isinstance(candidates, BaseModel):
        return _payload(candidates)
    if instruction is None:
        raise TypeError("rank() needs the instruction the candidates respond to")
    return {"instruction": instruction, "candidates": [_payload(c) for c in candidates], **_options(options)}


def _chunks(payload: dict[str, Any], key: str, size: int) -> Iterator[dict[str, Any]]:
    items = payload[key]
    for start in range(0, len(items), size):
        yield {**payload, key: items[start : start + size]}


def _delay(response: httpx.Response | None, attempt: int, backoff: float, cap: float) -> float:
    """Seconds before the next try: the server's Retry-After, else exponential backoff with
    jitter; at most ``cap`` either way (a huge or broken header never parks the caller)."""
    header = response.headers.get("Retry-After") if response is not None else None
    if header is not None:
        try:
            asked = float(header)
        except ValueError:
            asked = math.nan
        if not math.isnan(asked):
            return min(cap, max(0.0, asked))
    # Past ~60 doublings the power alone overflows a float: stop growing long before.
    return min(cap, backoff * (2 ** min(attempt, 60)) * (0.5 + random.random()))


class _Base:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        retries: int,
        backoff: float,
        max_items: int | None,
        max_retry_delay: float = MAX_RETRY_DELAY_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self.backoff = backoff
        self.max_retry_delay = max_retry_delay
        self._max_items = max_items

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before sending again, or None to stop. No response means the
        connection failed; scoring is idempotent, so sending again is safe."""
        if attempt >= self.retries or (response is not None and response.status_code not in RETRY_STATUSES):
            return None
        return _delay(response, attempt, self.backoff, self.max_retry_delay)

    @staticmethod
    def _scores(parts: Sequence[Any]) -> ScoreResponse:
        """Reassemble chunked /v1/score answers, in request order."""
        results = [r for part in parts for r in part["results"]]
        return ScoreResponse.model_validate({**parts[0], "results": results})

    @staticmethod
    def _verdicts(parts: Sequence[Any]) -> CompareResponse:
        results = [r for part in parts for r in part["results"]]
        return CompareResponse.model_validate({**parts[0], "results": results})

    def _answer(self, call: BatchCall[T], response: httpx.Response) -> T:
        if call.raw and response.status_code == 200:
            return call.read(response.content)
        return call.read(self._result(response))

    @staticmethod
    def _settled(batch: Batch, progress: Callable[[Batch], None] | None) -> bool:
        """Whether a polled batch has ended, after ``progress`` has seen it."""
        if progress is not None:
            progress(batch)
        return batch.done

    @staticmethod
    def _result(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code != 200:
            raise JudgeError(response.status_code, body)
        return body


class JudgeClient(_Base):
    """Blocking client. ``with JudgeClient(url, api_key=...) as judge: judge.score(items)``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_items: int | None = None,
        max_retry_delay: float = MAX_RETRY_DELAY_S,
    ) -> None:
        super().__init__(base_url, api_key, retries, backoff, max_items, max_retry_delay)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        return self._result(self._call(method, path, json=payload))

    def _call(self, method: str, path: str, idempotent: bool = True, **content: Any) -> httpx.Response:
        """The answer to one request after retries. A request that creates something
        (``idempotent=False``) is sent again only after a 429 or 503, which created nothing."""
        for attempt in itertools.count():
            try:
                response = self._http.request(method, path, **content)
            except httpx.TransportError:
                if not idempotent or (delay := self._retry_delay(attempt, None)) is None:
                    raise
            else:
                if (delay := self._retry_delay(attempt, response)) is None:
                    return response
            time.sleep(delay)
        raise AssertionError("unreachable")

    def max_items(self) -> int:
        if self._max_items is None:
            self._max_items = int(self._send("GET", "/ready")["max_items"])
        return self._max_items

    def ready(self) -> bool:
        return self._http.get("/ready").status_code == 200

    def model(self) -> str:
        """The name of the served judge model (from /ready)."""
        return str(self._send("GET", "/ready")["model"])

    def score(self, items: Sequence[Mapping[str, Any]] | BaseModel, **options: Any) -> ScoreResponse:
        """Score items (dicts or item models, or a whole request model); ``options`` are the request's other fields."""
        payload = _request(items, "items", options)
        parts = [self._send("POST", "/v1/score", part) for part in _chunks(payload, "items", self.max_items())]
        return self._scores(parts)

    def compare(self, pairs: Sequence[Mapping[str, Any]] | CompareRequest, **options: Any) -> CompareResponse:
        """Judge pairs (dicts or pair models, or a whole request model); ``options`` are the
        request's other fields (``swap``, ``critique``...)."""
        payload = _request(pairs, "pairs", options)
        parts = [self._send("POST", "/v1/compare", part) for part in _chunks(payload, "pairs", self.max_items())]
        return self._verdicts(parts)

    def rank(
        self, candidates: Sequence[Mapping[str, Any]] | RankRequest, instruction: str | None = None, **options: Any
    ) -> RankResponse:
        """Rank candidates (``{"id", "response"}``) to one instruction, best first; or pass a whole RankRequest."""
        return RankResponse.model_validate(
            self._send("POST", "/v1/rank", _rank_payload(candidates, instruction, options))
        )

    def _run(self, call: BatchCall[T]) -> T:
        return self._answer(call, self._call(call.method, call.path, call.idempotent, **call.content))

    def upload_batch_file(self, path: str | Path) -> FileObject:
        """Upload a JSONL file of requests (``{"custom_id", "method", "url", "body"}`` a line)."""
        return self._run(batch_calls.upload(path))

    def create_batch(
        self, input_file_id: str, endpoint: str = "/v1/score", completion_window: str = "24h", metadata: Metadata = None
    ) -> Batch:
        return self._run(batch_calls.create(input_file_id, endpoint, completion_window, metadata))

    def batch(self, batch_id: str) -> Batch:
        return self._run(batch_calls.retrieve(batch_id))

    def cancel_batch(self, batch_id: str) -> Batch:
        return self._run(batch_calls.cancel(batch_id))

    def list_batches(self, limit: int = 20, after: str | None = None) -> list[Batch]:
        """This key's batches, newest first, ``limit`` at a time after the batch ``after``."""
        return self._run(batch_calls.listing(limit, after))

    def file_content(self, file_id: str) -> bytes:
        """A file's bytes: an uploaded input, or a batch's output or error file (JSONL)."""
        return self._run(batch_calls.file_content(file_id))

    def wait_batch(self, batch_id: str, poll_s: float = 2.0, progress: Callable[[Batch], None] | None = None) -> Batch:
        """Poll until the batch ends (completed, failed, expired or cancelled); ``progress``
        sees every poll's answer."""
        while not self._settled(batch := self.batch(batch_id), progress):
            time.sleep(poll_s)
        return batch


class AsyncJudgeClient(_Base):
    """Asynchronous client; chunks of one call are sent concurrently (``concurrency`` at a time)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_items: int | None = None,
        concurrency: int = 8,
        max_retry_delay: float = MAX_RETRY_DELAY_S,
    ) -> None:
        super().__init__(base_url, api_key, retries, backoff, max_items, max_retry_delay)
        limits = httpx.Limits(max_connections=concurrency)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout, limits=limits)
        self._slots = asyncio.Semaphore(concurrency)

    async def __aenter__(self) -> AsyncJudgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        return self._result(await self._call(method, path, json=payload))

    async def _call(self, method: str, path: str, idempotent: bool = True, **content: Any) -> httpx.Response:
        """As ``JudgeClient._call``, ``concurrency`` requests at a time."""
        async with self._slots:
            for attempt in itertools.count():
                try:
                    response = await self._http.request(method, path, **content)
                except httpx.TransportError:
                    if not idempotent or (delay := self._retry_delay(attempt, None)) is None:
                        raise
                else:
                    if (delay := self._retry_delay(attempt, response)) is None:
                        return response
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def max_items(self) -> int:
        if self._max_items is None:
            self._max_items = int((await self._send("GET", "/ready"))["max_items"])
        return self._max_items

    async def model(self) -> str:
        """The name of the served judge model (from /ready)."""
        return str((await self._send("GET", "/ready"))["model"])

    async def score(self, items: Sequence[Mapping[str, Any]] | BaseModel, **options: Any) -> ScoreResponse:
        payload = _request(items, "items", options)
        size = await self.max_items()
        chunks = _chunks(payload, "items", size)
        return self._scores(await asyncio.gather(*(self._send("POST", "/v1/score", p) for p in chunks)))

    async def compare(self, pairs: Sequence[Mapping[str, Any]] | CompareRequest, **options: Any) -> CompareResponse:
        payload = _request(pairs, "pairs", options)
        size = await self.max_items()
        chunks = _chunks(payload, "pairs", size)
        return self._verdicts(await asyncio.gather(*(self._send("POST", "/v1/compare", p) for p in chunks)))

    async def rank(
        self, candidates: Sequence[Mapping[str, Any]] | RankRequest, instruction: str | None = None, **options: Any
    ) -> RankResponse:
        payload = _rank_payload(candidates, instruction, options)
        return RankResponse.model_validate(await self._send("POST", "/v1/rank", payload))

    async def _run(self, call: BatchCall[T]) -> T:
        return self._answer(call, await self._call(call.method, call.path, call.idempotent, **call.content))

    async def upload_batch_file(self, path: str | Path) -> FileObject:
        """As ``JudgeClient.upload_batch_file``; the calls below likewise."""
        return await self._run(batch_calls.upload(path))

    async def create_batch(
        self, input_file_id: str, endpoint: str = "/v1/score", completion_window: str = "24h", metadata: Metadata = None
    ) -> Batch:
        return await self._run(batch_calls.create(input_file_id, endpoint, completion_window, metadata))

    async def batch(self, batch_id: str) -> Batch:
        return await self._run(batch_calls.retrieve(batch_id))

    async def cancel_batch(self, batch_id: str) -> Batch:
        return await self._run(batch_calls.cancel(batch_id))

    async def list_batches(self, limit: int = 20, after: str | None = None) -> list[Batch]:
        return await self._run(batch_calls.listing(limit, after))

    async def file_content(self, file_id: str) -> bytes:
        return await self._run(batch_calls.file_content(file_id))

    async def wait_batch(
        self, batch_id: str, poll_s: float = 2.0, progress: Callable[[Batch], None] | None = None
    ) -> Batch:
        while not self._settled(batch := await self.batch(batch_id), progress):
            await asyncio.sleep(poll_s)
        return batch

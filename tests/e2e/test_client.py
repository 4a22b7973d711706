"""The Python clients and the batch-scoring CLI, against real running servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from judge_client import (
    AsyncJudgeClient,
    CompareResponse,
    CritiqueSpec,
    ItemScore,
    JudgeClient,
    JudgeError,
    ScoreResponse,
)

from tests.conftest import RunningServer, start_server

pytestmark = pytest.mark.slow

ITEMS = [{"id": f"i{n}", "instruction": f"What is {n}+{n}?", "response": str(2 * n)} for n in range(7)]


@pytest.fixture(scope="module")
def busy_server() -> Iterator[RunningServer]:
    running = start_server(max_queue=4, max_items=4, max_batch_size=1, max_wait_ms=0, api_keys="secret")
    yield running
    running.stop()


def test_client_chunks_and_returns_typed_results(busy_server: RunningServer) -> None:
    with JudgeClient(busy_server.url, api_key="secret") as judge:
        assert judge.max_items() == 4
        response = judge.score(ITEMS)
        pairs = judge.compare([{"id": "p", "instruction": "2+2?", "response_a": "4", "response_b": "5"}])
    assert isinstance(response, ScoreResponse) and isinstance(response.results[0], ItemScore)
    assert [r.id for r in response.results] == [item["id"] for item in ITEMS]
    assert isinstance(pairs, CompareResponse) and pairs.results[0].id == "p"


def test_client_retries_429_until_served(busy_server: RunningServer) -> None:
    def run(_: int) -> int:
        with JudgeClient(busy_server.url, api_key="secret", retries=30, backoff=0.05) as judge:
            return len(judge.score(ITEMS[:4]).results)

    # 6 callers of 4 items each against a queue of 4: most are refused at first, all end served.
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(run, range(6))) == [4] * 6
    metrics = busy_server.client().get("/metrics", headers={"Authorization": "Bearer secret"}).text
    line = next(x for x in metrics.splitlines() if 'outcome="overloaded"' in x and "judge_requests_total" in x)
    assert float(line.split()[-1]) > 0


def test_client_errors_are_typed(busy_server: RunningServer) -> None:
    with JudgeClient(busy_server.url, api_key="wrong") as judge, pytest.raises(JudgeError) as denied:
        judge.score(ITEMS[:1])
    assert denied.value.status == 401 and denied.value.type == "unauthorized"
    with JudgeClient(busy_server.url, api_key="secret") as judge, pytest.raises(JudgeError) as bad:
        judge.score([{"id": "r", "prompt": "x"}], labels=["1", "10"], method="lager")
    assert bad.value.status == 422 and bad.value.details["label"] == "10"


def test_async_client(busy_server: RunningServer) -> None:
    async def run() -> ScoreResponse:
        async with AsyncJudgeClient(busy_server.url, api_key="secret", concurrency=2, retries=30) as judge:
            return await judge.score(ITEMS)

    response = asyncio.run(run())
    assert [r.id for r in response.results] == [item["id"] for item in ITEMS]


def test_both_clients_compare_with_a_critique(busy_server: RunningServer) -> None:
    pair = {"id": "p", "instruction": "2+2?", "response_a": "4", "response_b": "5"}
    with JudgeClient(busy_server.url, api_key="secret", retries=30) as judge:
        plain = judge.compare([pair])
        written = judge.compare([pair], critique={"max_tokens": 4, "marker": "Verdict:"})

    async def run() -> CompareResponse:
        async with AsyncJudgeClient(busy_server.url, api_key="secret", retries=30) as judge:
            return await judge.compare([pair], critique=CritiqueSpec(max_tokens=4, marker="Verdict:"))

    from_async = asyncio.run(run())
    for response in (written, from_async):
        (result,) = response.results
        assert result.critiques is not None and list(result.critiques) == ["ab", "ba"]
        assert all(0 < c.critique_tokens <= 4 and c.critique for c in result.critiques.values())
        assert response.prompt_version != plain.prompt_version
    assert plain.results[0].critiques is None
    # Greedy: the same critiques from either client.
    assert written.results[0].critiques == from_async.results[0].critiques

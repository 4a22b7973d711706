"""Tests that try to break the service: load, faults, SIGTERM, disconnects, hostile input.

Every test talks to servers on 127.0.0.1 only, bounds its loops in count and time, and
stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    HANG_S,
    RunningServer,
    metric_sum,
    process_server,
    prompts_taken_in,
    start_server,
    wait_admitted,
    wait_until,
)

pytestmark = pytest.mark.slow

SHORT = {"items": [{"id": "s", "prompt": "Rate 1-5. Answer: fine. Score:"}]}


def valid_result(body: dict) -> bool:
    for result in body["results"]:
        probs = list(result["distribution"].values())
        if not math.isclose(sum(probs), 1.0, abs_tol=1e-6) or not all(0 <= p <= 1 for p in probs):
            return False
        if not 0 <= result["confidence"] <= 1 or not 0 < result["label_mass"] <= 1:
            return False
    return True


@pytest.fixture(scope="module")
def running_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, str]]:
    """The real server process, as `make serve` runs it, on a free loopback port."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with process_server(log, max_queue=48, max_items=16, shutdown_grace_s=60) as running:
        yield running


def test_load_every_request_gets_200_or_429(running_process) -> None:
    _, url = running_process
    statuses: list[int] = []
    latencies: list[float] = []
    invalid: list[dict] = []
    stop_at = time.monotonic() + 20
    payload = {"items": [{"id": str(i), "prompt": f"Item {i}. " + "text " * (20 * i) + "Score:"} for i in range(4)]}

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(200):  # bounded, and bounded in time below
                if time.monotonic() > stop_at:
                    return
                t0 = time.perf_counter()
                response = client.post("/v1/score", json=payload)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                if response.status_code == 200 and not valid_result(response.json()):
                    invalid.append(response.json())
                if response.status_code == 429:
                    assert response.headers["Retry-After"].isdigit()
                    time.sleep(0.25)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HANG_S)
    wall = time.perf_counter() - started
    assert not any(t.is_alive() for t in threads), "a request was left unanswered"
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(200) > 0 and not invalid
    ordered = sorted(latencies)
    ok = statuses.count(200)
    print(
        f"\nload: 16 clients, {len(statuses)} requests in {wall:.1f}s: {ok} ok ({4 * ok / wall:.1f} items/s), "
        f"{statuses.count(429)} x 429; latency of 200s p50 {1000 * statistics.median(ordered):.0f} ms, "
        f"p99 {1000 * ordered[int(0.99 * (len(ordered) - 1))]:.0f} ms"
    )


async def deadline_load(url: str, seconds: float, timeout_s: float | None, clients: int = 64) -> dict:
    """``clients`` concurrent clients for ``seconds``, each sending requests of 1-6 distinct
    short items (with ``timeout_s`` as their deadline) and waiting ``Retry-After`` after a
    429 or 503. Counts what was answered within the window; with a deadline, the requests
    still out when it ends are awaited too (none may hang)."""
    stop_at = time.monotonic() + seconds
    records: list[tuple[int, float, int]] = []  # status, latency, items

    async def client_loop(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for n in range(100_000):  # bounded, and bounded in time below
                if time.monotonic() > stop_at:
                    return
                count = rng.randint(1, 6)
                items = [
                    {"id": str(k), "prompt": f"Request {index}.{n}.{k}: " + "text " * rng.randint(5, 60) + "Score:"}
                    for k in range(count)
                ]
                body = {"items": items} | ({"timeout_s": timeout_s} if timeout_s else {})
                t0 = time.perf_counter()
                response = await client.post("/v1/score", json=body)
                records.append((response.status_code, time.perf_counter() - t0, count))
                if response.status_code in (429, 503):
                    pause = float(response.headers["Retry-After"])
                    await asyncio.sleep(max(0.0, min(pause, stop_at - time.monotonic())))

    loops = [asyncio.create_task(client_loop(i)) for i in range(clients)]
    await asyncio.sleep(seconds)
    if timeout_s is None:
        # Without deadlines the queue holds far more than the window: leave it (the
        # clients disconnect, and the server drops their items).
        for loop in loops:
            loop.cancel()
    done, pending = await asyncio.wait(loops, timeout=HANG_S)
    assert not pending, "a request was left unanswered"
    for loop in done:
        if not loop.cancelled() and loop.exception() is not None:
            raise loop.exception()  # type: ignore[misc]
    ok = [(latency, items) for status, latency, items in records if status == 200]
    latencies = sorted(latency for latency, _ in ok)
    statuses = [status for status, _, _ in records]
    return {
        "answered": len(records),
        "statuses": {code: statuses.count(code) for code in sorted(set(statuses))},
        "goodput_items_per_s": sum(items for _, items in ok) / seconds,
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
    }


def test_deadline_aware_admission_keeps_goodput_under_overload(tmp_path: Path) -> None:
    """64 clients of 1-6 items each overload the CPU many times over. With 10 s deadlines,
    admission refuses (429) what cannot finish in time instead of computing work nobody
    receives: almost no 504s, every 200 within its deadline, and nearly the throughput of
    the same load without deadlines."""
    with process_server(tmp_path / "server.log") as (_, url):
        free = asyncio.run(deadline_load(url, 20, None))
        bounded = asyncio.run(deadline_load(url, 40, 10.0))
    print(f"\nwithout deadlines: {free}\nwith 10 s deadlines: {bounded}")
    statuses = bounded["statuses"]
    assert set(statuses) <= {200, 429, 503, 504}, statuses
    assert statuses.get(504, 0) <= 0.01 * bounded["answered"], statuses
    # The deadline runs on the server, from the request's arrival; the client's clock adds
    # the transport and its own event loop (64 clients in this process), up to 10% here.
    assert statuses.get(200, 0) > 0 and bounded["p99_s"] <= 11.0
    assert bounded["goodput_items_per_s"] >= 0.9 * free["goodput_items_per_s"], (bounded, free)


def test_client_disconnect_mid_request_is_skipped(running_process) -> None:
    _, url = running_process
    port = int(url.rsplit(":", 1)[1])
    # Long deadlines: this test is about disconnects, not admission.
    items = [{"id": str(i), "prompt": "word " * 1500 + "Score:"} for i in range(8)]
    body = json.dumps({"items": items, "timeout_s": 300}).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            )
            sock.sendall(head.encode() + b"\r\n\r\n" + body)
            time.sleep(0.2)
    # The server keeps answering, and the abandoned items are dropped, not scored later.
    with httpx.Client(base_url=url, timeout=120) as client:
        assert client.post("/v1/score", json=SHORT).status_code == 200
    wait_until(lambda: metric_sum(url, "judge_queue_depth") == 0, "the abandoned items were not dropped")
    assert metric_sum(url, "judge_items_skipped_total", reason="cancelled") > 0


def test_the_deadline_runs_from_arrival_not_from_the_end_of_the_upload(running_process) -> None:
    """A body that takes longer to arrive than the request's deadline gets 504: the time
    spent uploading counts."""
    _, url = running_process
    port = int(url.rsplit(":", 1)[1])
    # 3 s leaves a one-item request ample time on a slow machine; the upload takes longer.
    body = json.dumps(SHORT | {"timeout_s": 3}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_S) as sock:
        head = f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        sock.sendall(head.encode() + b"\r\n\r\n" + body[:10])
        time.sleep(4)
        sock.sendall(body[10:])
        received = b""
        while b"deadline_exceeded" not in received and (chunk := sock.recv(65536)):
            received += chunk
        reply = received.decode()
    assert reply.startswith("HTTP/1.1 504"), reply[:200]
    assert '"deadline_exceeded"' in reply
    # Sent at once, the same body is answered.
    assert httpx.post(f"{url}/v1/score", json=SHORT | {"timeout_s": 3}, timeout=HANG_S).status_code == 200


def test_sigterm_drains_accepted_work_and_refuses_new(running_process) -> None:
    proc, url = running_process
    payload = {"items": [{"id": str(i), "prompt": "word " * 600 + "Score:"} for i in range(4)], "timeout_s": 300}
    before = prompts_taken_in(url)
    with ThreadPoolExecutor(6) as pool:
        accepted = [pool.submit(httpx.post, f"{url}/v1/score", json=payload, timeout=HANG_S) for _ in range(6)]
        wait_admitted(url, 6 * len(payload["items"]), since=before)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{url}/ready", timeout=HANG_S).status_code == 503, "no drain after SIGTERM")
        late = httpx.post(f"{url}/v1/score", json=SHORT, timeout=HANG_S)
        statuses = [f.result(timeout=HANG_S).status_code for f in accepted]
    assert statuses == [200] * 6, statuses
    assert late.status_code == 503 and late.headers["Retry-After"].isdigit()
    assert proc.wait(timeout=HANG_S) == 0


def test_a_second_sigterm_exits_at_once_with_its_documented_status(tmp_path: Path) -> None:
    """While a drain would take a long while (long admitted work, a long grace), a second
    SIGTERM ends the process at once: by exit status 128 + 15, not killed by the signal,
    and the admitted work is abandoned, not drained."""
    with process_server(tmp_path / "server.log", shutdown_grace_s=600, max_request_timeout_s=900) as (proc, url):
        items = [{"id": str(i), "prompt": f"Item {i}: " + "word " * 1500 + "Score:"} for i in range(32)]
        before = prompts_taken_in(url)
        with ThreadPoolExecutor(1) as pool:
            body = {"items": items, "timeout_s": 900}
            admitted = pool.submit(httpx.post, f"{url}/v1/score", json=body, timeout=900)
            wait_admitted(url, len(items), since=before)
            proc.send_signal(signal.SIGTERM)
            # The second signal comes once the server reports that it drains.
            wait_until(lambda: httpx.get(f"{url}/ready", timeout=HANG_S).status_code == 503, "no drain")
            assert not admitted.done()
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=HANG_S)
            exited_in = time.monotonic() - signalled
            outcome = admitted.exception(timeout=HANG_S)
    print(f"\nsecond SIGTERM: exit status {code} after {exited_in:.2f} s")
    assert code == 128 + signal.SIGTERM
    assert isinstance(outcome, httpx.TransportError), outcome


def test_engine_failure_mid_load_fails_only_its_requests(server: RunningServer, transformers_only) -> None:
    stop = threading.Event()
    results: list[int] = []

    def client_loop() -> None:
        with server.client() as client:
            for _ in range(100_000):  # bounded; the stop event ends it
                if stop.is_set():
                    return
                results.append(client.post("/v1/score", json=SHORT).status_code)

    model = server.runtime.engine.model
    layers = model.model.layers
    failed_before = metric_sum(server.url, "judge_batch_failures_total")
    with ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(client_loop) for _ in range(6)]
        wait_until(lambda: len(results) >= 6, "no request answered under load")
        model.model.layers = None  # a real fault inside the real model
        try:
            # The fault stays until the server reports a batch that failed of it.
            wait_until(
                lambda: metric_sum(server.url, "judge_batch_failures_total") > failed_before,
                "no batch failed of the fault",
            )
        finally:
            model.model.layers = layers
        mark = len(results)
        wait_until(lambda: 200 in results[mark:], "no request answered after the fault")
        stop.set()
        for job in jobs:
            job.result(timeout=HANG_S)
    assert set(results) <= {200, 500}, set(results)
    assert 500 in results and results[-1] == 200
    with server.client() as client:
        assert client.post("/v1/score", json=SHORT).status_code == 200


@pytest.fixture(scope="module")
def tight_server() -> Iterator[RunningServer]:
    running = start_server(max_items=16, max_model_len=512, max_body_bytes=1024 * 1024)
    yield running
    running.stop()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-json"),
        pytest.param(b'{"items": [{"id": "a", "prompt": "\xff\xfe\xfd"}]}', id="invalid-utf8"),
        pytest.param(b'{"items": [{"id": "a", "prompt": "x"}], "label_values": {"1": Infinity}}', id="infinity"),
        pytest.param(b'{"items": [{"id": "a", "prompt": "x"}], "timeout_s": NaN}', id="nan"),
        pytest.param(b'{"items": [{"id": "a", "prompt": "x"}], "items": []}', id="duplicate-key"),
        pytest.param(b"\x00" * 1000, id="binary"),
        pytest.param(json.dumps({"items": [{"id": "a", "prompt": "x"}] * 10_000}).encode(), id="10k-items"),
        pytest.param(json.dumps({"items": [{"id": "a", "prompt": "x " * 5000}]}).encode(), id="prompt-length"),
        pytest.param(json.dumps({"items": [{"id": "a", "prompt": "x" * 600_000}]}).encode(), id="huge-field"),
        pytest.param(b"x" * (2 * 1024 * 1024), id="huge-body"),
    ],
)
def test_nasty_bodies_get_clear_4xx(tight_server: RunningServer, body: bytes) -> None:
    with tight_server.client() as client:
        response = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, response.text[:300]
        error = response.json()["error"]
        assert error["type"] in {"invalid_request", "payload_too_large"}
        assert "Traceback" not in response.text
        assert client.post("/v1/score", json=SHORT).status_code == 200


def test_duplicate_ids_are_scored_in_order(tight_server: RunningServer) -> None:
    prompts = ["Score:", "Rate it. Score:", "Score:"]
    items = [{"id": "same", "prompt": p} for p in prompts]
    with tight_server.client() as client:
        together = client.post("/v1/score", json={"items": items, "return_logprobs": True}).json()["results"]
        alone = [
            client.post("/v1/score", json={"items": [item], "return_logprobs": True}).json()["results"][0]
            for item in items
        ]
    assert [r["id"] for r in together] == ["same"] * 3
    # Each position holds its own item's answer: swapped results would not match.
    for mine, single in zip(together, alone, strict=True):
        assert mine["prompt_tokens"] == single["prompt_tokens"]
        assert list(mine["logprobs"].values()) == pytest.approx(list(single["logprobs"].values()), abs=1e-4)
    assert together[0]["logprobs"] != together[1]["logprobs"]


def test_rubric_template_syntax_stays_literal(tight_server: RunningServer) -> None:
    from service.requests.prompts import Prompts, Rubric

    evil = "{{ 7*7 }} {% for x in range(3) %}{{ x }}{% endfor %} {{ config }} ${HOME} %(name)s {0}"
    rubric = {"criteria": evil, "score_descriptions": {"1": evil, "2": "{{ self.__init__ }}"}}
    prompts = Prompts(tight_server.runtime.prompts.tokenizer)
    text = prompts.score(evil, evil, None, Rubric(evil, (("1", evil), ("2", "x"))))
    assert text.count(evil) == 4 and "49" not in text
    with tight_server.client() as client:
        body = {"items": [{"id": "a", "instruction": evil, "response": evil}], "rubric": rubric}
        response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text


def test_request_id_is_accepted_or_generated(tight_server: RunningServer) -> None:
    with tight_server.client() as client:
        given = client.post("/v1/score", json=SHORT, headers={"X-Request-ID": "abc-123"})
        made = client.get("/health")
        bad = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert given.headers["X-Request-ID"] == "abc-123"
    assert len(made.headers["X-Request-ID"]) == 32
    assert bad.headers["X-Request-ID"] != "bad id\twith spaces"

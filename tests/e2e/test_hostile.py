"""Hostile input against a real server: a corpus of malformed bodies, huge numbers and slow
uploads. Each gets its documented status (a 4xx in the error envelope, never a 5xx), the
server stays up, /health keeps answering, and a well-behaved client's answer is the same,
float for float, before and after."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import HANG_S, RunningServer, start_server

pytestmark = pytest.mark.slow

ITEM = {"id": "a", "prompt": "Rate 1-5. Answer: fine. Score:"}
GOOD = {"items": [ITEM, {"id": "b", "prompt": "Rate 1-5. Answer: 2+2=5. Score:"}], "return_logprobs": True}
PAIR = {"id": "p", "instruction": "What is 2+2?", "response_a": "4", "response_b": "5"}
CANDIDATES = [{"id": "x", "response": "4"}, {"id": "y", "response": "5"}]
RUBRIC = {"criteria": "Correct?", "score_descriptions": {"1": "no", "2": "yes"}}
STRUCTURED = {"id": "s", "instruction": "What is 2+2?", "response": "4"}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _score(**fields: Any) -> bytes:
    return _json({"items": [ITEM], **fields})


# (name, path, body, content type, status, error type): 50 bodies a client should never send.
CORPUS: list[tuple[str, str, bytes, str, int, str]] = [
    ("empty body", "/v1/score", b"", "application/json", 422, "invalid_request"),
    ("truncated json", "/v1/score", b'{"items": [', "application/json", 422, "invalid_request"),
    ("json null", "/v1/score", b"null", "application/json", 422, "invalid_request"),
    ("json list", "/v1/score", b"[]", "application/json", 422, "invalid_request"),
    ("json string", "/v1/score", b'"items"', "application/json", 422, "invalid_request"),
    ("json number", "/v1/score", b"123", "application/json", 422, "invalid_request"),
    ("deep nesting", "/v1/score", b"[" * 50_000 + b"]" * 50_000, "application/json", 422, "invalid_request"),
    (
        "invalid utf-8",
        "/v1/score",
        b'{"items": [{"id": "a", "prompt": "\xff\xfe"}]}',
        "application/json",
        422,
        "invalid_request",
    ),
    ("binary", "/v1/score", bytes(range(256)) * 4, "application/json", 422, "invalid_request"),
    ("empty items", "/v1/score", _json({"items": []}), "application/json", 422, "invalid_request"),
    ("items null", "/v1/score", _json({"items": None}), "application/json", 422, "invalid_request"),
    ("items a string", "/v1/score", _json({"items": "abc"}), "application/json", 422, "invalid_request"),
    ("items numbers", "/v1/score", _json({"items": [1, 2]}), "application/json", 422, "invalid_request"),
    (
        "id a number",
        "/v1/score",
        _json({"items": [{"id": 5, "prompt": "x"}]}),
        "application/json",
        422,
        "invalid_request",
    ),
    ("missing prompt", "/v1/score", _json({"items": [{"id": "a"}]}), "application/json", 422, "invalid_request"),
    ("unknown field", "/v1/score", _score(bogus=1), "application/json", 422, "invalid_request"),
    (
        "unknown item field",
        "/v1/score",
        _json({"items": [{**ITEM, "extra": True}]}),
        "application/json",
        422,
        "invalid_request",
    ),
    ("no labels", "/v1/score", _score(labels=[]), "application/json", 422, "invalid_request"),
    ("one label", "/v1/score", _score(labels=["1"]), "application/json", 422, "invalid_request"),
    ("33 labels", "/v1/score", _score(labels=[str(n) for n in range(33)]), "application/json", 422, "invalid_request"),
    ("label of 33 chars", "/v1/score", _score(labels=["x" * 33, "y"]), "application/json", 422, "invalid_request"),
    ("same labels", "/v1/score", _score(labels=["1", "1"]), "application/json", 422, "invalid_request"),
    (
        "label value NaN",
        "/v1/score",
        b'{"items": [{"id": "a", "prompt": "x"}], "label_values": {"1": NaN}}',
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "label value Infinity",
        "/v1/score",
        b'{"items": [{"id": "a", "prompt": "x"}], "label_values": {"1": Infinity}}',
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "label value -Infinity",
        "/v1/score",
        b'{"items": [{"id": "a", "prompt": "x"}], "label_values": {"1": -Infinity}}',
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "label value 1e400",
        "/v1/score",
        b'{"items": [{"id": "a", "prompt": "x"}], "label_values": {"1": 1e400}}',
        "application/json",
        422,
        "invalid_request",
    ),
    ("label value a word", "/v1/score", _score(label_values={"1": "high"}), "application/json", 422, "invalid_request"),
    ("label value of no label", "/v1/score", _score(label_values={"9": 1}), "application/json", 422, "invalid_request"),
    ("timeout 0", "/v1/score", _score(timeout_s=0), "application/json", 422, "invalid_request"),
    ("timeout negative", "/v1/score", _score(timeout_s=-1), "application/json", 422, "invalid_request"),
    ("timeout 1e308", "/v1/score", _score(timeout_s=1e308), "application/json", 422, "invalid_request"),
    (
        "timeout NaN",
        "/v1/score",
        b'{"items": [{"id": "a", "prompt": "x"}], "timeout_s": NaN}',
        "application/json",
        422,
        "invalid_request",
    ),
    ("timeout a word", "/v1/score", _score(timeout_s="soon"), "application/json", 422, "invalid_request"),
    ("unknown method", "/v1/score", _score(method="bogus"), "application/json", 422, "invalid_request"),
    ("negative hidden layer", "/v1/score", _score(hidden_layers=[-1]), "application/json", 422, "invalid_request"),
    ("repeated hidden layer", "/v1/score", _score(hidden_layers=[1, 1]), "application/json", 422, "invalid_request"),
    ("huge hidden layer", "/v1/score", _score(hidden_layers=[10**30]), "application/json", 422, "invalid_request"),
    (
        "critique of 0 tokens",
        "/v1/score",
        _score(critique={"max_tokens": 0, "marker": "X"}),
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "critique of 1e30 tokens",
        "/v1/score",
        _score(critique={"max_tokens": 10**30, "marker": "X"}),
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "empty marker",
        "/v1/score",
        _score(critique={"max_tokens": 4, "marker": ""}),
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "prompt of 200,001 chars",
        "/v1/score",
        _json({"items": [{"id": "a", "prompt": "x" * 200_001}]}),
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "id of 257 chars",
        "/v1/score",
        _json({"items": [{"id": "i" * 257, "prompt": "x"}]}),
        "application/json",
        422,
        "invalid_request",
    ),
    ("65 items", "/v1/score", _json({"items": [ITEM] * 65}), "application/json", 422, "invalid_request"),
    (
        "criterion weight 0",
        "/v1/score",
        _json({"items": [STRUCTURED], "rubrics": {"c": {**RUBRIC, "weight": 0}}}),
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "criterion weight 1e300",
        "/v1/score",
        _json({"items": [STRUCTURED], "rubrics": {"c": {**RUBRIC, "weight": 1e300}}}),
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "refused template key",
        "/v1/score",
        _json({"items": [STRUCTURED], "chat_template_kwargs": {"evil": 1}}),
        "application/json",
        422,
        "invalid_request",
    ),
    ("no pairs", "/v1/compare", _json({"pairs": []}), "application/json", 422, "invalid_request"),
    (
        "negative length slack",
        "/v1/compare",
        _json({"pairs": [PAIR], "length_control": {"k": -1}}),
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "one candidate",
        "/v1/rank",
        _json({"instruction": "2+2?", "candidates": CANDIDATES[:1]}),
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "same candidate ids",
        "/v1/rank",
        _json({"instruction": "2+2?", "candidates": [CANDIDATES[0]] * 2}),
        "application/json",
        422,
        "invalid_request",
    ),
    (
        "body over the limit",
        "/v1/score",
        _json({"items": [{"id": "a", "prompt": "x" * (5 * 1024 * 1024)}]}),
        "application/json",
        413,
        "payload_too_large",
    ),
    ("wrong content type", "/v1/score", _json(GOOD), "text/plain", 422, "invalid_request"),
]


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[RunningServer]:
    # No prefix cache: every answer is computed afresh, so equal requests give equal floats.
    running = start_server(engine="transformers", prefix_cache_mb=0)
    yield running
    running.stop()


def _health_s(client: httpx.Client) -> float:
    started = time.perf_counter()
    assert client.get("/health").status_code == 200
    return time.perf_counter() - started


def test_the_corpus_has_fifty_distinct_cases() -> None:
    assert len(CORPUS) >= 50 and len({case[0] for case in CORPUS}) == len(CORPUS)


def test_malformed_bodies_get_their_documented_4xx_and_change_nothing(hostile_server: RunningServer) -> None:
    with hostile_server.client() as client:
        before = client.post("/v1/score", json=GOOD)
        assert before.status_code == 200, before.text
        wrong: dict[str, tuple[int, str]] = {}
        health = []
        for name, path, body, content_type, status, kind in CORPUS:
            response = client.post(path, content=body, headers={"content-type": content_type})
            error = (
                response.json().get("error", {})
                if response.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            if (response.status_code, error.get("type")) != (status, kind) or "Traceback" in response.text:
                wrong[name] = (response.status_code, response.text[:200])
            health.append(_health_s(client))
        after = client.post("/v1/score", json=GOOD)
    assert not wrong, wrong
    # Generous: a slow shared machine answers /health in milliseconds; a stall would not.
    assert max(health) < 10.0, max(health)
    assert after.status_code == 200 and after.json()["results"] == before.json()["results"]


def test_huge_label_values_are_answered_with_finite_figures(hostile_server: RunningServer) -> None:
    """label_values of +-1e200 and the top of the float range: 200 with the moments of the
    returned distribution, computed here on values divided by 1e200 (nothing overflows)."""
    for top in (1e200, 1.7e308):
        body = {"items": [ITEM], "labels": ["1", "2", "3"], "label_values": {"1": -top, "2": 0, "3": top}}
        with hostile_server.client() as client:
            response = client.post("/v1/score", json=body)
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        probs = [result["distribution"][label] for label in ("1", "2", "3")]
        unit = [-1.0, 0.0, 1.0]
        mean = sum(p * u for p, u in zip(probs, unit, strict=True))
        std = math.sqrt(sum(p * (u - mean) ** 2 for p, u in zip(probs, unit, strict=True)))
        assert math.isfinite(result["expected_score"]) and math.isfinite(result["std"])
        assert result["expected_score"] == pytest.approx(mean * top, rel=1e-9, abs=1e-9 * top)
        assert result["std"] == pytest.approx(std * top, rel=1e-9)


def test_slow_uploads_hold_no_one_up(hostile_server: RunningServer) -> None:
    """Eight clients trickle their bodies in: /health and a good client are answered
    meanwhile, with the same floats as before."""
    port = int(hostile_server.url.rsplit(":", 1)[1])
    body = _json(GOOD)
    head = f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    with hostile_server.client() as client:
        before = client.post("/v1/score", json=GOOD).json()["results"]
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=HANG_S) for _ in range(8)]
        try:
            for sock in sockets:
                sock.sendall(head.encode() + b"\r\n\r\n" + body[:20])
            for step in range(3):
                for sock in sockets:
                    sock.sendall(body[20 + step : 21 + step])
                assert _health_s(client) < 10.0
            during = client.post("/v1/score", json=GOOD)
        finally:
            for sock in sockets:
                sock.close()
        after = client.post("/v1/score", json=GOOD)
    assert during.status_code == 200 and during.json()["results"] == before
    assert after.status_code == 200 and after.json()["results"] == before

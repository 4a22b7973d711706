"""Every row of the error table, against a real server with the real default model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.scheduling.admission import LONE_MISS_S
from tests.conftest import RunningServer, start_server

pytestmark = pytest.mark.slow

ITEM = {"id": "a", "instruction": "Say hi.", "response": "Hi!"}


def assert_error(response, status: int, kind: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind
    for word in words:
        assert word in json.dumps(error), (word, error)
    # Never a stack trace or internal exception text.
    assert "Traceback" not in response.text and 'File "' not in response.text
    return error


def test_malformed_json(client) -> None:
    response = client.post("/v1/score", content=b'{"items": [', headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")


def test_unknown_field_is_named(client) -> None:
    response = client.post("/v1/score", json={"items": [ITEM], "temperature": 0})
    assert_error(response, 422, "invalid_request", "temperature")


def test_unknown_item_field_is_named(client) -> None:
    response = client.post("/v1/score", json={"items": [{**ITEM, "score": 5}]})
    assert_error(response, 422, "invalid_request", "score")


def test_empty_items(client) -> None:
    assert_error(client.post("/v1/score", json={"items": []}), 422, "invalid_request", "items")


def test_multi_token_label_with_a_per_layer_method_is_named(client) -> None:
    body = {"items": [{"id": "r", "prompt": "x"}], "labels": ["1", "10"], "method": "lager"}
    error = assert_error(client.post("/v1/score", json=body), 422, "invalid_request", "'10'")
    assert error["details"]["label"] == "10"


def test_duplicate_labels(client) -> None:
    response = client.post("/v1/score", json={"items": [{"id": "r", "prompt": "x"}], "labels": ["1", "1"]})
    assert_error(response, 422, "invalid_request", "unique")


def test_mixed_items_and_missing_fields(client) -> None:
    mixed = {"items": [ITEM, {"id": "r", "prompt": "x"}]}
    assert_error(client.post("/v1/score", json=mixed), 422, "invalid_request", "mix")
    missing = {"items": [{"id": "a", "instruction": "only"}]}
    assert_error(client.post("/v1/score", json=missing), 422, "invalid_request", "response")


def test_nan_label_value_rejected(client) -> None:
    body = b'{"items": [{"id": "r", "prompt": "x"}], "label_values": {"1": NaN}}'
    response = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request", "label_values")


def test_body_too_large(client) -> None:
    big = {"items": [{"id": "a", "prompt": "x" * 150_000}] * 40}
    assert_error(client.post("/v1/score", json=big), 413, "payload_too_large")


def test_too_many_items(client) -> None:
    response = client.post("/v1/score", json={"items": [ITEM] * 65})
    error = assert_error(response, 422, "invalid_request", "65", "64")
    assert error["details"] == {"items": 65, "max_items": 64}


def test_prompt_longer_than_model(client) -> None:
    response = client.post("/v1/score", json={"items": [{"id": "long", "prompt": "hello " * 9000}]})
    error = assert_error(response, 422, "invalid_request", "8192")
    assert error["details"]["prompt_tokens"] > 8192
    assert error["details"]["max_model_len"] == 8192


def assert_deadline_refused(response) -> None:
    """504 once the deadline passes. On a machine so loaded that the request alone is
    predicted to miss its deadline by more than ``LONE_MISS_S``, admission refuses it
    before it runs, as documented: 429 with the prediction."""
    if response.status_code == 429:
        details = response.json()["error"]["details"]
        assert_error(response, 429, "overloaded")
        assert details["predicted_s"] - details["deadline_s"] >= LONE_MISS_S, details
    else:
        assert_error(response, 504, "deadline_exceeded")


def test_deadline_passed(client) -> None:
    response = client.post("/v1/score", json={"items": [ITEM], "timeout_s": 0.01})
    assert_deadline_refused(response)
    response = client.post("/v1/score", json={"items": [ITEM]}, headers={"X-Request-Timeout": "0.01"})
    assert_deadline_refused(response)


def test_deadline_below_the_minimum_is_refused(client) -> None:
    response = client.post("/v1/score", json={"items": [ITEM], "timeout_s": 5e-324})
    assert_error(response, 422, "invalid_request", "timeout_s", "0.01")
    response = client.post("/v1/score", json={"items": [ITEM]}, headers={"X-Request-Timeout": "0.001"})
    assert_error(response, 422, "invalid_request", "x-request-timeout")


def test_unsupported_method_names_the_allowed_ones(client) -> None:
    response = client.request("TRACE", "/ready")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET"


def test_not_found_uses_envelope(client) -> None:
    assert_error(client.get("/v2/nothing"), 404, "not_found")


def test_bad_request_does_not_affect_others(client) -> None:
    good = {"items": [ITEM]}
    bad = {"items": [{"id": "r", "prompt": "x"}], "labels": ["1", "10"], "method": "lager"}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: client.post("/v1/score", json=good if i % 2 else bad), range(8)))
    assert [r.status_code for r in responses] == [422, 200] * 4


@pytest.fixture(scope="module")
def small_server():
    running = start_server(max_queue=8, max_items=8, max_batch_size=1, max_wait_ms=0)
    yield running
    running.stop()


def test_queue_full_gets_429_with_retry_after(small_server: RunningServer) -> None:
    long_items = [{"id": str(i), "prompt": "word " * 1500 + "Score:"} for i in range(8)]
    with small_server.client() as client, ThreadPoolExecutor(4) as pool:
        # The longest deadline: this test is about the queue bound, not admission by deadline.
        body = {"items": long_items, "timeout_s": 300}
        responses = list(pool.map(lambda _: client.post("/v1/score", json=body), range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses, statuses
    for response in responses:
        if response.status_code == 429:
            assert_error(response, 429, "queue_full")
            assert response.headers["Retry-After"].isdigit()
    assert small_server.runtime.scheduler.depth == 0


def test_engine_failure_gives_generic_500_and_service_recovers(small_server: RunningServer) -> None:
    model = small_server.runtime.engine.model
    layers = model.model.layers
    # A real fault inside the real model: the decoder stack is gone.
    model.model.layers = None
    try:
        with small_server.client() as client:
            response = client.post("/v1/score", json={"items": [ITEM]})
        error = assert_error(response, 500, "internal")
        assert error["message"] == "internal error"
        assert "NoneType" not in response.text
    finally:
        model.model.layers = layers
    with small_server.client() as client:
        assert client.post("/v1/score", json={"items": [ITEM]}).status_code == 200


def test_draining_gets_503(small_server: RunningServer) -> None:
    small_server.lifecycle.begin_drain()
    with small_server.client() as client:
        assert_error(client.get("/ready"), 503, "unavailable")
        response = client.post("/v1/score", json={"items": [ITEM]})
        assert_error(response, 503, "unavailable")
        assert response.headers["Retry-After"].isdigit()

"""API keys: missing, wrong and right keys on a real server; the comparison itself."""

from __future__ import annotations

import hmac

import pytest

from service.auth import ApiKeys
from service.errors import JudgeError
from tests.conftest import RunningServer, start_server

ITEM = {"items": [{"id": "a", "prompt": "Score:"}]}
# A valid request for each scoring endpoint: each needs the key.
REQUESTS = {
    "/v1/score": ITEM,
    "/v1/compare": {"pairs": [{"id": "p", "instruction": "What is 2+2?", "response_a": "4", "response_b": "5"}]},
    "/v1/rank": {
        "instruction": "What is 2+2?",
        "candidates": [{"id": "a", "response": "4"}, {"id": "b", "response": "5"}],
        "strategy": "pointwise",
    },
}


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    keys_file.write_text("# one key per line\nfile-key\n")
    running = start_server(api_keys="key-one, key-two", api_keys_file=keys_file, metrics_auth=True)
    yield running
    running.stop()


@pytest.mark.parametrize("path", list(REQUESTS))
def test_missing_key_is_401_with_challenge(keyed_server: RunningServer, path: str) -> None:
    with keyed_server.client() as client:
        response = client.post(path, json=REQUESTS[path])
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["type"] == "unauthorized"
        # The same request with a key is answered: the 401 was the key's doing.
        assert client.post(path, json=REQUESTS[path], headers={"Authorization": "Bearer key-one"}).status_code == 200


@pytest.mark.parametrize("path", list(REQUESTS))
@pytest.mark.parametrize("header", ["Bearer wrong", "Bearer key-one2", "Basic key-one", "key-one", "Bearer"])
def test_wrong_key_is_401(keyed_server: RunningServer, header: str, path: str) -> None:
    with keyed_server.client() as client:
        response = client.post(path, json=REQUESTS[path], headers={"Authorization": header})
    assert response.status_code == 401
    assert "key-one" not in response.text


@pytest.mark.parametrize("key", ["key-one", "key-two", "file-key"])
def test_right_key_is_accepted(keyed_server: RunningServer, key: str) -> None:
    with keyed_server.client() as client:
        response = client.post("/v1/score", json=ITEM, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text


def test_probes_stay_open_and_metrics_can_be_protected(keyed_server: RunningServer) -> None:
    with keyed_server.client() as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer key-two"}).status_code == 200


def test_keys_are_hashed_and_compared_against_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ApiKeys(["alpha", "beta", "gamma"])
    assert "alpha" not in repr(vars(keys))
    calls = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys.check("Bearer alpha")  # matches the first key, yet every key is compared
    assert len(calls) == 3
    with pytest.raises(JudgeError):
        keys.check("Bearer delta")
    assert len(calls) == 6


def test_no_keys_means_open(client) -> None:
    assert client.post("/v1/score", json=ITEM).status_code == 200

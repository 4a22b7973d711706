"""API keys: missing, wrong and right keys on a real server, and a server that will not
start on a key file that holds none."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, RunningServer, free_port, start_server

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
    # An indented comment is a comment too: "# old-key" must not become a key.
    keys_file.write_text("# one key per line\nfile-key\n  # old-key\n\t#another\n")
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
@pytest.mark.parametrize(
    "header",
    ["Bearer # old-key", "Bearer #another", "Bearer wrong", "Bearer key-one2", "Basic key-one", "key-one", "Bearer"],
)
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


def test_no_keys_means_open(client) -> None:
    assert client.post("/v1/score", json=ITEM).status_code == 200


def test_the_server_refuses_to_start_on_an_empty_key_file(tmp_path: Path) -> None:
    """The real command: it exits with a clear message instead of serving without auth."""
    keys_file = tmp_path / "keys"
    keys_file.write_text("  # old-key\n")
    port = free_port()
    env = {**os.environ, "JUDGE_PORT": str(port), "JUDGE_API_KEYS_FILE": str(keys_file)}
    # Bounds only a hang: the refusal comes before the model loads.
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "JUDGE_API_KEYS_FILE" in done.stderr and "holds no key" in done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


async def _flood(url: str, body: bytes, clients: int) -> tuple[list[int], list[float]]:
    """``clients`` unauthenticated posts of ``body`` at once, and /health probed meanwhile."""
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients + 4)) as http:
        posts = [
            asyncio.create_task(http.post("/v1/score", content=body, headers={"content-type": "application/json"}))
            for _ in range(clients)
        ]
        health: list[float] = []
        while not all(p.done() for p in posts) or not health:
            started = time.perf_counter()
            assert (await http.get("/health")).status_code == 200
            health.append(time.perf_counter() - started)
        return [(await p).status_code for p in posts], health


def test_unauthenticated_floods_get_401_and_health_stays_answered(keyed_server: RunningServer) -> None:
    """64 concurrent bodies of just under the 4 MiB limit, without a key: every one gets
    401 (none is scored, none is a 413 or 5xx), and /health answers throughout."""
    limit = keyed_server.app.state.settings.max_body_bytes
    body = json.dumps({"items": [{"id": "a", "prompt": ""}]}).encode()
    body = body.replace(b'""', b'"' + b"x" * (limit - len(body) - 16) + b'"')
    assert limit - 64 < len(body) <= limit
    statuses, health = asyncio.run(_flood(keyed_server.url, body, 64))
    assert statuses == [401] * 64
    # Generous: a slow shared machine answers in well under a second; a stall would not.
    assert max(health) < 10.0, health

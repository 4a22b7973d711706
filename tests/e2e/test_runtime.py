"""The runtime: readiness, health and exit when its parts die, and no engine left behind."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import psutil
import pytest

from service.config import Settings
from service.observability.metrics import Metrics
from service.serving.runtime import Runtime
from tests.conftest import HANG_S, engine_settings, start_server

pytestmark = pytest.mark.slow


def test_a_dead_scheduler_loop_turns_health_and_readiness_503_and_exits_non_zero() -> None:
    running = start_server()
    # The test stops the server itself once it has read the 503s: a server that exits at
    # once would refuse the connections this test reads them through.
    exit_requested = threading.Event()
    running.lifecycle.request_exit = exit_requested.set
    try:
        loop_task = running.runtime.scheduler._plain.loop_task
        # Kill the loop from outside, as an unforeseen fault would.
        loop_task.get_loop().call_soon_threadsafe(loop_task.cancel)
        deadline = time.monotonic() + HANG_S
        while running.lifecycle.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        with running.client() as client:
            statuses = {path: client.get(path).status_code for path in ("/health", "/ready")}
            score = client.post("/v1/score", json={"items": [{"id": "a", "prompt": "Score:"}]})
        assert statuses == {"/health": 503, "/ready": 503}
        assert score.status_code == 503
        assert exit_requested.wait(HANG_S), "the server did not ask to exit"
        assert running.lifecycle.exit_code == 1
    finally:
        running.stop()


def test_a_failed_load_check_closes_the_started_engine(tmp_path: Path) -> None:
    """Layer weights that do not fit the model fail the start after the engine started; the
    engine (for vLLM: its engine-core and worker processes) must not outlive it."""
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"weights": [0.0, 0.0, 0.0]}))
    settings = Settings(layer_weights_file=weights, **engine_settings("vllm"))
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    async def start() -> Runtime:
        runtime = Runtime(settings, Metrics())
        await runtime.start()
        return runtime

    runtime = asyncio.run(start())
    assert runtime.lifecycle.failed and not runtime.lifecycle.ready and runtime.engine is None
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()]
        left = [p for p in left if p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(0.5)
    assert not left, [p.name() for p in left]

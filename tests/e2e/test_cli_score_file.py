"""``judge-service score``: resumable batch scoring, over HTTP and in-process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import HANG_S, RunningServer, start_server, wait_until

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


def test_score_cli_splits_a_chunk_the_queue_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk still refused with 429 is split in halves, each sent on its own: with four of
    the queue's eight places held by a pass that does not end, the command's chunk of eight
    is refused and its halves of four are admitted; every item is scored once, as the
    endpoint scores it."""
    running = start_server(max_items=8, max_queue=8, stall_floor_s=HANG_S)
    items = [{"id": f"i{n}", "instruction": f"What is {n}+{n}?", "response": str(2 * n)} for n in range(8)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(item) + "\n" for item in items))
    out = tmp_path / "out.jsonl"
    try:
        queue = running.runtime.scheduler
        monkeypatch.setenv("JUDGE_FAILPOINT_PASS_BLOCK", "1")
        holding = threading.Thread(
            target=lambda: httpx.post(f"{running.url}/v1/score", json={"items": items[:4]}, timeout=HANG_S)
        )
        holding.start()
        wait_until(lambda: queue.depth == 4, "the held request was not admitted")
        command = [sys.executable, "-m", "service", "score", str(source), "-o", str(out), "--url", running.url]
        proc = subprocess.Popen(
            [*command, "--retries", "0", "--concurrency", "1", "--no-progress"], stdout=subprocess.PIPE, text=True
        )
        # The chunk of eight cannot fit beside the held four; a half can.
        wait_until(lambda: queue.depth == 8 or proc.poll() is not None, "the command neither split nor ended")
        monkeypatch.delenv("JUDGE_FAILPOINT_PASS_BLOCK")
        stdout, _ = proc.communicate(timeout=HANG_S)
        holding.join(HANG_S)
        assert proc.returncode == 0
        assert "scored 8, already done 0, failed 0" in stdout, stdout
        served = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert sorted(served) == [item["id"] for item in items]
        with running.client() as client:
            want = client.post("/v1/score", json={"items": items}).json()["results"]
        for result in want:
            got = served[result["id"]]
            assert got["distribution"] == pytest.approx(result["distribution"], abs=1e-4)
            assert got["expected_score"] == pytest.approx(result["expected_score"], abs=1e-4)
    finally:
        monkeypatch.delenv("JUDGE_FAILPOINT_PASS_BLOCK", raising=False)
        running.stop()

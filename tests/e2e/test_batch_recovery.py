"""A server killed with SIGKILL mid-job: restarted on the same SQLite store, it finishes
the job, and every custom_id appears exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import process_server
from tests.support.batches import assert_each_line_once, client_for, jsonl, score_line, submit, wait_for, wait_progress

pytestmark = pytest.mark.slow

LINES = 48


def test_kill_mid_job_then_restart_completes_each_line_once(tmp_path: Path) -> None:
    settings = {"engine": "transformers", "data_dir": tmp_path / "data", "jobs_chunk_items": 4, "jobs_lease_s": 3}
    lines = [score_line(f"k{n}", f"What is {n} times {n}?", f"It is {n * n}.") for n in range(LINES)]
    with process_server(tmp_path / "first.log", **settings) as (proc, url):
        client = client_for(url)
        batch = submit(client, jsonl(lines))
        answered = wait_progress(client, batch.id, 8)
        proc.kill()
        proc.wait(timeout=30)
    with process_server(tmp_path / "second.log", **settings) as (_, url):
        client = client_for(url)
        resumed = client.batches.retrieve(batch.id)
        # Nothing answered before the kill is lost.
        assert resumed.request_counts is not None and resumed.request_counts.completed >= answered
        assert_each_line_once(client, wait_for(client, batch.id), lines)

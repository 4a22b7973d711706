"""Two real server processes sharing one real PostgreSQL: a batch created on one is polled
and downloaded from the other with the synchronous answers; a replica killed with SIGKILL
mid-job loses its leases to the other, which finishes the job with each line once. The
kill test ends replica A, so it runs last."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import HANG_S, ROOT, free_port, metric_sum, process_server
from tests.support.batches import (
    QUESTIONS,
    assert_close,
    assert_each_line_once,
    client_for,
    jsonl,
    lines_of,
    score_line,
    submit,
    wait_for,
    wait_progress,
)
from tests.support.postgres import PASSWORD, PostgresServer

pytestmark = pytest.mark.slow

# The transformers engine's tolerance between a batched line and the synchronous answer
# (tests.conftest.tolerance).
TOLERANCE = 1e-4
# Short leases, so a dead replica's chunks are taken over within seconds.
SETTINGS = {"engine": "transformers", "jobs_chunk_items": 2, "jobs_lease_s": 3, "log_format": "text"}


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> str:
    return postgres.database()


@pytest.fixture(scope="module")
def replicas(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[Any, str, Path]]]:
    """Replicas A and B on one database: (process, url, log) each."""
    logs = [tmp_path_factory.mktemp("replicas") / f"{name}.log" for name in ("a", "b")]
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(logs)) as pool:
        # Both load their model at once: the wait is for the slower one, not the sum.
        servers = [process_server(log, jobs_database_url=database, **SETTINGS) for log in logs]
        started = list(pool.map(stack.enter_context, servers))
        yield [(proc, url, log) for (proc, url), log in zip(started, logs, strict=True)]


def test_a_batch_created_on_one_replica_is_read_from_the_other(replicas: list[tuple[Any, str, Path]]) -> None:
    (_, url_a, log_a), (_, url_b, log_b) = replicas
    lines = [score_line(f"q{k}", q, a) for k, (q, a) in enumerate(QUESTIONS)]
    batch = submit(client_for(url_a), jsonl(lines))
    reader = client_for(url_b)
    done = wait_for(reader, batch.id)
    assert_each_line_once(reader, done, lines)
    # Each line counted once across the replicas, whichever answered it.
    assert sum(metric_sum(url, "judge_batch_items_total") for url in (url_a, url_b)) == len(lines)
    with httpx.Client(base_url=url_b, timeout=HANG_S) as http:
        for line, out in zip(lines, lines_of(reader, done.output_file_id), strict=True):
            assert out["response"]["status_code"] == 200
            assert_close(out["response"]["body"], http.post("/v1/score", json=line["body"]).json(), TOLERANCE)
    # The database URL is a secret: neither replica logged its password.
    assert PASSWORD not in log_a.read_text() + log_b.read_text()


def live_chunks(database: str, batch_id: str, pid: int) -> list[int]:
    """The batch's chunks leased to the worker of process ``pid`` and still pending."""
    with psycopg.connect(database) as db:
        rows = db.execute(
            "SELECT chunk FROM job_chunks WHERE batch_id = %s AND state = 'pending' AND claimed_by LIKE %s",
            (batch_id, f"%:{pid}:%"),
        ).fetchall()
    return [row[0] for row in rows]


def owners(database: str, batch_id: str, chunks: list[int]) -> set[str]:
    with psycopg.connect(database) as db:
        rows = db.execute(
            "SELECT claimed_by FROM job_chunks WHERE batch_id = %s AND chunk = ANY(%s)", (batch_id, chunks)
        ).fetchall()
    return {row[0].split(":")[1] for row in rows}


def test_a_killed_replicas_leases_are_taken_over(replicas: list[tuple[Any, str, Path]], database: str) -> None:
    (proc_a, url_a, _), (proc_b, url_b, _) = replicas
    lines = [score_line(f"k{n}", f"What is {n} times {n}?", f"It is {n * n}.") for n in range(24)]
    batch = submit(client_for(url_a), jsonl(lines))
    wait_progress(client_for(url_b), batch.id, 4)
    deadline = time.monotonic() + HANG_S
    while not live_chunks(database, batch.id, proc_a.pid):
        assert time.monotonic() < deadline, "replica A never held a chunk"
        time.sleep(0.05)
    proc_a.kill()
    proc_a.wait(timeout=30)
    orphans = live_chunks(database, batch.id, proc_a.pid)
    assert orphans, "replica A released its chunks before it died"
    reader = client_for(url_b)
    assert_each_line_once(reader, wait_for(reader, batch.id), lines)
    # Replica B answered what A held when it died.
    assert owners(database, batch.id, orphans) == {str(proc_b.pid)}


def test_an_unreachable_database_stops_startup_without_the_secret(tmp_path: Path) -> None:
    url = f"postgresql://judge:{PASSWORD}@127.0.0.1:{free_port()}/jobs"
    env = {**os.environ, "JUDGE_PORT": str(free_port()), "JUDGE_JOBS_DATABASE_URL": url, "JUDGE_LOG_FORMAT": "text"}
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=HANG_S
    )
    # uvicorn's exit status for a failed startup.
    assert done.returncode == 3
    output = done.stdout + done.stderr
    assert "the job database (JUDGE_JOBS_DATABASE_URL) cannot be reached" in output
    assert "startup failed" in output
    assert PASSWORD not in output and url not in output

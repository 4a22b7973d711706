"""The job store's guarantees, the same on both backends (SQLite and a real PostgreSQL):
a claim leases a chunk, concurrent claimers never share one, an expired lease is taken
over, a line's answer is written once, and a finished batch becomes its output file."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from service.core.errors import ErrorKind, JudgeError
from service.jobs.postgres import PostgresStore
from service.jobs.sql import SqlStore
from service.jobs.sqlite import SQLiteStore
from service.jobs.store import BatchRecord, Claim, Due, FileRecord, ItemRow, new_id, now_s
from tests.conftest import free_port
from tests.support.postgres import PASSWORD, PostgresServer

Opener = Callable[[], SqlStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores on one database: each is another connection, as another replica's."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").database()

        def make() -> SqlStore:
            return PostgresStore(url)
    else:

        def make() -> SqlStore:
            return SQLiteStore(tmp_path / "jobs.sqlite3")

    opened: list[SqlStore] = []

    def opener() -> SqlStore:
        opened.append(make())
        return opened[-1]

    yield opener
    for store in opened:
        store.close()


def add_batch(store: SqlStore, lines: int, chunk_items: int, owner: str = "owner") -> str:
    created = now_s()
    record = BatchRecord(
        id=new_id("batch_"), owner=owner, endpoint="/v1/score", input_file_id="file-in", completion_window="1h",
        status="in_progress", created_at=created, expires_at=created + 3600, total=lines,
        times={"in_progress": created},
    )  # fmt: skip
    items = [ItemRow(n, f"c{n}", {"items": [{"id": f"i{n}", "prompt": f"p{n}"}]}) for n in range(lines)]
    store.add_batch(record, items, chunk_items)
    return record.id


def claimed(claim: Claim | None) -> tuple[int, list[str]]:
    assert claim is not None
    return claim.chunk, [item.custom_id for item in claim.items]


def test_a_claim_leases_the_next_free_chunk_with_its_pending_lines(open_store: Opener) -> None:
    store = open_store()
    batch_id = add_batch(store, lines=5, chunk_items=2)
    first = store.claim("w1", 60)
    assert claimed(first) == (0, ["c0", "c1"])
    assert first is not None and first.batch_id == batch_id and first.items[0].body["items"][0]["prompt"] == "p0"
    assert claimed(store.claim("w2", 60)) == (1, ["c2", "c3"])
    assert claimed(store.claim("w3", 60)) == (2, ["c4"])
    assert store.claim("w4", 60) is None
    # An answered line is not leased again: chunk 0 comes back with only its pending line.
    assert store.record(batch_id, 0, 200, {"ok": True})
    store.release(first, "w1")
    assert claimed(store.claim("w4", 60)) == (0, ["c1"])


def test_concurrent_claimers_never_share_a_chunk(open_store: Opener) -> None:
    chunks = 40
    stores = [open_store(), open_store()]
    add_batch(stores[0], lines=chunks, chunk_items=1)
    taken: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(len(taken))

    def claimer(k: int) -> None:
        start.wait()
        while (claim := stores[k % 2].claim(f"w{k}", 60)) is not None:
            taken[k].append(claim.chunk)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(len(taken))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = sorted(chunk for found in taken for chunk in found)
    assert every == list(range(chunks)), "a chunk was leased twice or not at all"


def test_postgres_claim_skips_a_chunk_another_transaction_holds(postgres: PostgresServer) -> None:
    url = postgres.database()
    store = PostgresStore(url)
    try:
        add_batch(store, lines=4, chunk_items=2)
        with psycopg.connect(url) as holder:
            # Another replica's claim in flight: chunk 0's row locked, its lease not yet written.
            holder.execute("SELECT chunk FROM job_chunks WHERE chunk = 0 FOR UPDATE")
            found: list[Claim | None] = []
            thread = threading.Thread(target=lambda: found.append(store.claim("w2", 60)), daemon=True)
            thread.start()
            thread.join(timeout=10)
            assert found, "the claim waited for the locked chunk instead of skipping it"
            holder.rollback()
        assert claimed(found[0]) == (1, ["c2", "c3"])
    finally:
        store.close()


def test_an_expired_lease_is_taken_over(open_store: Opener) -> None:
    first, second = open_store(), open_store()
    add_batch(first, lines=2, chunk_items=2)
    lease = first.claim("w1", 0.3)
    assert claimed(lease) == (0, ["c0", "c1"])
    assert second.claim("w2", 60) is None
    time.sleep(0.4)
    taken = second.claim("w2", 60)
    assert claimed(taken) == (0, ["c0", "c1"])
    assert lease is not None and taken is not None
    # The first worker has lost it: no renewal, and its release leaves the new lease alone.
    assert not first.renew(lease, "w1", 60)
    assert second.renew(taken, "w2", 60)
    first.release(lease, "w1")
    assert first.claim("w3", 60) is None


def test_a_line_is_written_once(open_store: Opener) -> None:
    stores = [open_store(), open_store()]
    lines = 20
    batch_id = add_batch(stores[0], lines=lines, chunk_items=4)
    assert stores[0].record(batch_id, 0, 200, {"first": True})
    assert not stores[1].record(batch_id, 0, 200, {"second": True})
    wins: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def writer(k: int) -> None:
        start.wait()
        wins[k] = [line for line in range(1, lines) if stores[k].record(batch_id, line, 200, {"writer": k})]

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(wins[0] + wins[1]) == list(range(1, lines))
    batch = stores[0].get_batch(batch_id, "owner")
    assert batch is not None and (batch.completed, batch.failed) == (lines, 0)


def test_a_finished_batch_becomes_its_output_and_error_files(open_store: Opener) -> None:
    store = open_store()
    batch_id = add_batch(store, lines=3, chunk_items=2)
    assert store.record(batch_id, 0, 200, {"score": 0.25})
    assert store.record(batch_id, 1, 422, {"error": {"type": "invalid_request"}})
    assert store.record(batch_id, 2, 200, {"score": 0.5})
    assert store.due(60) == [Due(batch_id, "in_progress", "finalizing")]
    assert store.finalize(Due(batch_id, "in_progress", "finalizing"))
    assert store.finalize(Due(batch_id, "finalizing", "completed"))
    assert not store.finalize(Due(batch_id, "finalizing", "completed"))
    # An ended batch takes no more answers.
    assert not store.record(batch_id, 0, 200, {"late": True})
    batch = store.get_batch(batch_id, "owner")
    assert batch is not None and batch.status == "completed" and (batch.completed, batch.failed) == (2, 1)
    assert batch.output_file_id is not None and batch.error_file_id is not None
    output = [json.loads(line) for line in (store.file_content(batch.output_file_id, "owner") or b"").splitlines()]
    assert [(o["custom_id"], o["response"]["body"]) for o in output] == [
        ("c0", {"score": 0.25}),
        ("c2", {"score": 0.5}),
    ]
    errors = [json.loads(line) for line in (store.file_content(batch.error_file_id, "owner") or b"").splitlines()]
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("c1", 422)]
    assert store.counts() == {"completed": 1}


def test_files_keep_their_bytes(open_store: Opener) -> None:
    store = open_store()
    content = bytes(range(256)) * 3
    record = FileRecord(new_id("file-"), "owner", "input.jsonl", "batch", len(content), now_s())
    store.add_file(record, content)
    assert store.file_content(record.id, "owner") == content
    assert store.file_content(record.id, "someone else") is None
    assert store.list_files("owner") == [record]
    assert store.delete_file(record.id, "owner") and not store.delete_file(record.id, "owner")


def test_replicas_starting_together_create_the_tables_once(postgres: PostgresServer) -> None:
    url = postgres.database()
    start = threading.Barrier(4)
    opened: list[PostgresStore] = []
    failures: list[BaseException] = []

    def replica() -> None:
        start.wait()
        try:
            opened.append(PostgresStore(url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in opened:
        store.close()
    assert not failures and len(opened) == 4


def test_a_connection_lost_while_idle_is_reopened(postgres: PostgresServer) -> None:
    url = postgres.database()
    store = PostgresStore(url)
    try:
        batch_id = add_batch(store, lines=1, chunk_items=1)
        with psycopg.connect(url, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'judge-service' "
                "AND datname = current_database()"
            ).fetchall()
        assert ended == [(True,)]
        batch = store.get_batch(batch_id, "owner")
        assert batch is not None and batch.total == 1
    finally:
        store.close()


def test_a_connection_lost_inside_a_transaction_answers_unavailable_then_reconnects(
    postgres: PostgresServer,
) -> None:
    url = postgres.database()
    store = PostgresStore(url)
    try:
        batch_id = add_batch(store, lines=2, chunk_items=2)
        failed: list[BaseException] = []

        def record() -> None:
            try:
                store.record(batch_id, 0, 200, {"ok": True})
            except BaseException as exc:
                failed.append(exc)

        with psycopg.connect(url, autocommit=True) as admin:
            with admin.transaction():
                # Hold the batch's row, so the store's record() waits inside its transaction.
                admin.execute("SELECT 1 FROM job_batches WHERE id = %s FOR UPDATE", (batch_id,))
                thread = threading.Thread(target=record, daemon=True)
                thread.start()
                waiting = (
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'judge-service' "
                    "AND datname = current_database() AND wait_event_type = 'Lock'"
                )
                deadline = time.monotonic() + 30
                while not (pids := admin.execute(waiting).fetchall()):
                    assert time.monotonic() < deadline, "record() never waited for the row"
                    time.sleep(0.02)
                admin.execute("SELECT pg_terminate_backend(%s)", pids[0])
                thread.join(timeout=30)
        assert len(failed) == 1 and isinstance(failed[0], JudgeError)
        assert failed[0].kind is ErrorKind.UNAVAILABLE and PASSWORD not in failed[0].message
        # Nothing of the lost transaction was written, and the next call reconnects.
        assert store.record(batch_id, 0, 200, {"ok": True})
        batch = store.get_batch(batch_id, "owner")
        assert batch is not None and batch.completed == 1
    finally:
        store.close()


@pytest.mark.parametrize("where", ["closed port", "wrong password"])
def test_an_unreachable_database_fails_clearly_without_the_secret(postgres: PostgresServer, where: str) -> None:
    wrong = "wrong-" + PASSWORD
    if where == "wrong password":
        url = postgres.url(password=wrong)
    else:
        url = f"postgresql://judge:{PASSWORD}@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(JudgeError) as caught:
        PostgresStore(url)
    assert caught.value.kind is ErrorKind.UNAVAILABLE
    message = caught.value.message
    assert message.startswith("the job database (JUDGE_JOBS_DATABASE_URL) cannot be reached: ")
    assert url not in message and PASSWORD not in message
    # The driver's exception is not chained: a log of this error shows only this message.
    assert caught.value.__suppress_context__ and caught.value.__cause__ is None
    print(message)

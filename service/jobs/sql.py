"""The store in portable SQL; ``sqlite`` and ``postgres`` supply the connection and the
row locks (``_row_lock``): the only SQL that differs between them."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from service.jobs.output import output_files
from service.jobs.schema import BATCH_COLUMNS, STAMPS
from service.jobs.store import TERMINAL, BatchRecord, Claim, Due, FileRecord, ItemRow, new_id, now_s

Row = Any


class SqlStore:
    """Every store operation over a ``_transaction`` the backend provides."""

    # Whether transactions run side by side and must lock the rows they decide on.
    # SQLite's run one at a time (BEGIN IMMEDIATE takes the write lock), so it needs none;
    # PostgreSQL's run concurrently (READ COMMITTED) and lock with SELECT ... FOR UPDATE.
    ROW_LOCKS = False

    def _row_lock(self, alias: str, *, skip_locked: bool) -> str:
        """The suffix that locks the select's rows of ``alias``: ``skip_locked`` passes over
        rows another transaction holds (a claim takes the next chunk) instead of waiting."""
        if not self.ROW_LOCKS:
            return ""
        return f" FOR UPDATE OF {alias}" + (" SKIP LOCKED" if skip_locked else "")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    # Files ----------------------------------------------------------------------------
    def add_file(self, record: FileRecord, content: bytes) -> None:
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO job_files (id, owner, filename, purpose, bytes, created_at, content) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.owner, record.filename, record.purpose, record.bytes, record.created_at, content),
            )

    def get_file(self, file_id: str, owner: str) -> FileRecord | None:
        with self._transaction() as tx:
            row = tx.execute(
                "SELECT id, owner, filename, purpose, bytes, created_at FROM job_files WHERE id = ? AND owner = ?",
                (file_id, owner),
            ).fetchone()
        return FileRecord(*row) if row else None

    def file_content(self, file_id: str, owner: str) -> bytes | None:
        with self._transaction() as tx:
            row = tx.execute("SELECT content FROM job_files WHERE id = ? AND owner = ?", (file_id, owner)).fetchone()
        return bytes(row[0]) if row else None

    def list_files(self, owner: str) -> list[FileRecord]:
        with self._transaction() as tx:
            rows = tx.execute(
                "SELECT id, owner, filename, purpose, bytes, created_at FROM job_files WHERE owner = ? "
                "ORDER BY created_at DESC, id DESC",
                (owner,),
            ).fetchall()
        return [FileRecord(*row) for row in rows]

    def delete_file(self, file_id: str, owner: str) -> bool:
        with self._transaction() as tx:
            return bool(tx.execute("DELETE FROM job_files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount)

    # Batches --------------------------------------------------------------------------
    def add_batch(self, record: BatchRecord, items: list[ItemRow], chunk_items: int) -> None:
        """The batch, its lines and its chunks, in one transaction: all or nothing."""
        with self._transaction() as tx:
            tx.execute(
                f"INSERT INTO job_batches ({BATCH_COLUMNS}, ended_at, seq) VALUES ({', '.join('?' * 24)})",
                # seq orders the list: creation order, finer than created_at's seconds.
                (*_batch_values(record), record.times.get("failed"), time.time_ns()),
            )
            tx.executemany(
                "INSERT INTO job_items (batch_id, line, custom_id, chunk, body, state) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (record.id, it.line, it.custom_id, k // chunk_items, json.dumps(it.body), "pending")
                    for k, it in enumerate(items)
                ],
            )
            chunks = (len(items) + chunk_items - 1) // chunk_items
            tx.executemany(
                "INSERT INTO job_chunks (batch_id, chunk, state) VALUES (?, ?, ?)",
                [(record.id, chunk, "pending") for chunk in range(chunks)],
            )

    def get_batch(self, batch_id: str, owner: str) -> BatchRecord | None:
        with self._transaction() as tx:
            row = tx.execute(
                f"SELECT {BATCH_COLUMNS} FROM job_batches WHERE id = ? AND owner = ?", (batch_id, owner)
            ).fetchone()
        return _batch(row) if row else None

    def list_batches(self, owner: str, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        """Newest first; ``after``: the last id of the previous page."""
        with self._transaction() as tx:
            where, params = "owner = ?", [owner]
            if after is not None:
                cursor = tx.execute("SELECT seq FROM job_batches WHERE id = ? AND owner = ?", (after, owner)).fetchone()
                if cursor is None:
                    return [], False
                where += " AND seq < ?"
                params += [cursor[0]]
            rows = tx.execute(
                f"SELECT {BATCH_COLUMNS} FROM job_batches WHERE {where} ORDER BY seq DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        return [_batch(row) for row in rows[:limit]], len(rows) > limit

    def cancel_batch(self, batch_id: str, owner: str) -> BatchRecord | None:
        """Move a running batch to ``cancelling``; other statuses stay as they are."""
        with self._transaction() as tx:
            tx.execute(
                "UPDATE job_batches SET status = 'cancelling', cancelling_at = ? "
                "WHERE id = ? AND owner = ? AND status IN ('validating', 'in_progress')",
                (now_s(), batch_id, owner),
            )
        return self.get_batch(batch_id, owner)

    # Work -----------------------------------------------------------------------------
    def claim(self, worker: str, lease_s: float) -> Claim | None:
        """Lease the oldest running batch's next free chunk: never started, or its lease ran out."""
        now = time.time()
        with self._transaction() as tx:
            row = tx.execute(
                "SELECT c.batch_id, c.chunk, b.endpoint, b.expires_at FROM job_chunks c "
                "JOIN job_batches b ON b.id = c.batch_id "
                "WHERE c.state = 'pending' AND c.lease_expires < ? AND b.status = 'in_progress' AND b.expires_at > ? "
                "ORDER BY b.seq, c.chunk LIMIT 1" + self._row_lock("c", skip_locked=True),
                (now, int(now)),
            ).fetchone()
            if row is None:
                return None
            batch_id, chunk, endpoint, expires_at = row
            tx.execute(
                "UPDATE job_chunks SET claimed_by = ?, lease_expires = ? WHERE batch_id = ? AND chunk = ?",
                (worker, now + lease_s, batch_id, chunk),
            )
            rows = tx.execute(
                "SELECT line, custom_id, body FROM job_items WHERE batch_id = ? AND chunk = ? AND state = 'pending' "
                "ORDER BY line",
                (batch_id, chunk),
            ).fetchall()
        items = tuple(ItemRow(line, custom_id, json.loads(body)) for line, custom_id, body in rows)
        return Claim(batch_id, chunk, endpoint, expires_at, items)

    def renew(self, claim: Claim, worker: str, lease_s: float) -> bool:
        """Extend the lease; False when it was lost or the batch no longer runs."""
        with self._transaction() as tx:
            return bool(
                tx.execute(
                    "UPDATE job_chunks SET lease_expires = ? WHERE batch_id = ? AND chunk = ? AND claimed_by = ? "
                    "AND state = 'pending' AND EXISTS "
                    "(SELECT 1 FROM job_batches WHERE id = ? AND status = 'in_progress' AND expires_at > ?)",
                    (time.time() + lease_s, claim.batch_id, claim.chunk, worker, claim.batch_id, now_s()),
                ).rowcount
            )

    def record(self, batch_id: str, line: int, status_code: int, body: dict[str, Any]) -> bool:
        """Write one line's answer unless it has one, or its batch has ended; counts it."""
        with self._transaction() as tx:
            # The batch's row first: a finalization holding it ends the batch before this
            # line can count (the counter below would wait for it anyway).
            running = tx.execute(
                "SELECT 1 FROM job_batches b WHERE id = ? AND status IN ('in_progress', 'cancelling')"
                + self._row_lock("b", skip_locked=False),
                (batch_id,),
            ).fetchone()
            if running is None:
                return False
            written = tx.execute(
                "UPDATE job_items SET state = 'done', status_code = ?, response = ? "
                "WHERE batch_id = ? AND line = ? AND state = 'pending'",
                (status_code, json.dumps(body), batch_id, line),
            ).rowcount
            if written:
                column = "completed" if status_code == 200 else "failed"
                tx.execute(f"UPDATE job_batches SET {column} = {column} + 1 WHERE id = ?", (batch_id,))
        return bool(written)

    def release(self, claim: Claim, worker: str) -> None:
        """Hand a chunk back: done when none of its lines is pending, else free to claim now."""
        with self._transaction() as tx:
            pending = tx.execute(
                "SELECT COUNT(*) FROM job_items WHERE batch_id = ? AND chunk = ? AND state = 'pending'",
                (claim.batch_id, claim.chunk),
            ).fetchone()[0]
            tx.execute(
                "UPDATE job_chunks SET state = ?, lease_expires = 0 "
                "WHERE batch_id = ? AND chunk = ? AND claimed_by = ?",
                ("pending" if pending else "done", claim.batch_id, claim.chunk, worker),
            )

    def due(self, stale_s: float) -> list[Due]:
        """Batches to move on: every line answered (finalize), past the window (expire),
        cancelling with no chunk under a live lease (cancel), or a finalization that a
        dead replica left half done."""
        now = time.time()
        with self._transaction() as tx:
            rows = tx.execute(
                "SELECT id, status, CASE "
                " WHEN status = 'finalizing' THEN 'completed'"
                " WHEN status = 'cancelling' THEN 'cancelled'"
                " WHEN completed + failed >= total THEN 'finalizing' ELSE 'expired' END FROM job_batches b "
                "WHERE (status = 'in_progress' AND (completed + failed >= total OR expires_at <= ?)) "
                "OR (status = 'finalizing' AND finalizing_at <= ?) "
                "OR (status = 'cancelling' AND NOT EXISTS (SELECT 1 FROM job_chunks c WHERE c.batch_id = b.id "
                "AND c.state = 'pending' AND c.lease_expires >= ?))",
                (int(now), int(now - stale_s), now),
            ).fetchall()
        return [Due(*row) for row in rows]

    def finalize(self, due: Due) -> bool:
        """Move a batch as ``due`` says, if it is still in that status; a terminal status
        writes its output and error files in the same transaction."""
        stamp = now_s()
        with self._transaction() as tx:
            found = tx.execute(
                "SELECT owner FROM job_batches b WHERE id = ? AND status = ?" + self._row_lock("b", skip_locked=True),
                (due.batch_id, due.status),
            ).fetchone()
            if found is None:
                return False
            if due.to not in TERMINAL:
                tx.execute(
                    f"UPDATE job_batches SET status = ?, {due.to}_at = ? WHERE id = ?", (due.to, stamp, due.batch_id)
                )
                return True
            rows = tx.execute(
                "SELECT line, custom_id, state, status_code, response FROM job_items WHERE batch_id = ? ORDER BY line",
                (due.batch_id,),
            ).fetchall()
            output, errors = output_files(due.batch_id, due.to, rows)
            ids = [self._output(tx, found[0], "output", output), self._output(tx, found[0], "errors", errors)]
            tx.execute(
                f"UPDATE job_batches SET status = ?, {due.to}_at = ?, ended_at = ?, output_file_id = ?, "
                "error_file_id = ? WHERE id = ?",
                (due.to, stamp, stamp, ids[0], ids[1], due.batch_id),
            )
        return True

    @staticmethod
    def _output(tx: Any, owner: str, name: str, content: bytes) -> str | None:
        if not content:
            return None
        file_id = new_id("file-")
        tx.execute(
            "INSERT INTO job_files (id, owner, filename, purpose, bytes, created_at, content) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (file_id, owner, f"batch_{name}.jsonl", "batch_output", len(content), now_s(), content),
        )
        return file_id

    def purge(self, older_than: int) -> int:
        """Delete batches that ended before ``older_than`` with their lines and files, and
        input files as old that no running batch reads. Returns the batches deleted."""
        with self._transaction() as tx:
            # In id order, so two replicas purging at once take the rows' locks in one order.
            ended = [
                (row[0], row[1], row[2])
                for row in tx.execute(
                    "SELECT id, output_file_id, error_file_id FROM job_batches WHERE ended_at IS NOT NULL "
                    "AND ended_at < ? ORDER BY id",
                    (older_than,),
                ).fetchall()
            ]
            for batch_id, output_id, error_id in ended:
                for table in ("job_items", "job_chunks"):
                    tx.execute(f"DELETE FROM {table} WHERE batch_id = ?", (batch_id,))
                tx.execute("DELETE FROM job_files WHERE id IN (?, ?)", (output_id or "", error_id or ""))
                tx.execute("DELETE FROM job_batches WHERE id = ?", (batch_id,))
            tx.execute(
                "DELETE FROM job_files WHERE purpose = 'batch' AND created_at < ? AND id NOT IN "
                "(SELECT input_file_id FROM job_batches WHERE ended_at IS NULL)",
                (older_than,),
            )
        return len(ended)

    def counts(self) -> dict[str, int]:
        with self._transaction() as tx:
            rows = tx.execute("SELECT status, COUNT(*) FROM job_batches GROUP BY status").fetchall()
        return {status: int(n) for status, n in rows}


def _batch_values(record: BatchRecord) -> tuple[Any, ...]:
    return (
        record.id, record.owner, record.endpoint, record.input_file_id, record.completion_window, record.status,
        record.created_at, record.expires_at, record.total, record.completed, record.failed,
        record.output_file_id, record.error_file_id,
        json.dumps(record.errors) if record.errors else None,
        json.dumps(record.metadata) if record.metadata is not None else None,
        *(record.times.get(name) for name in STAMPS),
    )  # fmt: skip


def _batch(row: Row) -> BatchRecord:
    (bid, owner, endpoint, input_id, window, status, created, expires, total, completed, failed,
     output_id, error_id, errors, metadata, *stamps) = row  # fmt: skip
    return BatchRecord(
        id=bid, owner=owner, endpoint=endpoint, input_file_id=input_id, completion_window=window, status=status,
        created_at=created, expires_at=expires, total=total, completed=completed, failed=failed,
        output_file_id=output_id, error_file_id=error_id,
        errors=json.loads(errors) if errors else None,
        metadata=json.loads(metadata) if metadata else None,
        times=dict(zip(STAMPS, stamps, strict=True)),
    )  # fmt: skip

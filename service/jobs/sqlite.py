"""The embedded store: one SQLite file in WAL mode under the data directory.

WAL lets readers (a poll of a batch's status) run while a worker writes. Several
processes on one host may share the file (a restart overlapping the old process):
writes take SQLite's write lock at ``BEGIN IMMEDIATE``, so a chunk's claim is a
select-and-update no other process can interleave with.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.jobs.schema import TABLES
from service.jobs.sql import SqlStore

# How long a write waits for another process's write lock before it fails.
BUSY_TIMEOUT_S = 30.0


class SQLiteStore(SqlStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection, used by one thread at a time (the worker calls in threads).
        self._db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL loses no committed transaction on a process crash (only on
        # power loss), and spares an fsync per answered line.
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._transaction() as tx:
            for statement in TABLES:
                tx.execute(statement.format(blob="BLOB"))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""The shared store: one PostgreSQL database that every replica uses
(``JUDGE_JOBS_DATABASE_URL``), files' bytes included (BYTEA).

One connection per replica, used by one thread at a time under a lock, as the SQLite
store does. A replica's traffic is a few short transactions per answered line and per
poll, far below what one connection carries; a pool (another package) would add
connections the database must allow for every replica and buy no throughput here.

Transactions run side by side across replicas (READ COMMITTED), so the SQL locks the rows
it decides on (``SqlStore.ROW_LOCKS``): a claim takes its chunk with ``FOR UPDATE SKIP
LOCKED``, so two replicas never lease the same chunk and neither waits for the other.

A connection found lost when a transaction begins (the database restarted, a proxy closed
it) is reopened and the transaction goes on, since nothing of it ran yet. Lost in the
middle of one, the transaction fails with 503 ``unavailable`` (its outcome is the
database's: committed or not) and the next one reconnects. Messages never carry the URL
or its password.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from service.core.errors import ErrorKind, JudgeError
from service.jobs.schema import TABLES
from service.jobs.sql import SqlStore

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
# Held while the tables are created, so replicas starting together do not race on the
# catalog (concurrent CREATE TABLE IF NOT EXISTS can fail on a unique index of pg_type).
SCHEMA_LOCK_KEY = 0x6A6F6273  # "jobs"
# How long a client is told to wait before retrying while the database is away.
RETRY_AFTER_S = 5.0


def pg_sql(statement: str) -> str:
    """The portable SQL's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return statement.replace("%", "%%").replace("?", "%s")


class _Transaction:
    """The connection as ``SqlStore`` uses it: ``execute`` and ``executemany`` with ``?``."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def execute(self, statement: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._cursor.execute(pg_sql(statement), params)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        self._cursor.executemany(pg_sql(statement), rows)
        return self._cursor


class PostgresStore(SqlStore):
    ROW_LOCKS = True

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._db = self._connect()
        try:
            with self._transaction() as tx:
                tx.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
                for statement in TABLES:
                    tx.execute(statement.format(blob="BYTEA"))
        except BaseException:
            self._db.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name="judge-service"
            )
        except psycopg.Error as exc:
            raise JudgeError(
                ErrorKind.UNAVAILABLE,
                f"the job database (JUDGE_JOBS_DATABASE_URL) cannot be reached: {self._scrub(exc)}",
                retry_after_s=RETRY_AFTER_S,
            ) from None

    def _scrub(self, exc: BaseException) -> str:
        """The driver's reason, first line only, without the URL or its password (libpq's
        messages hold neither, but an unparsable URL is quoted back in some versions)."""
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else type(exc).__name__
        secrets = [self._url]
        with contextlib.suppress(Exception):
            password = conninfo_to_dict(self._url).get("password")
            if password:
                secrets.append(str(password))
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    def _begin(self) -> psycopg.Connection[Any]:
        """A connection inside a new transaction; a lost one is replaced first."""
        if self._db.closed:
            self._db = self._connect()
        try:
            self._db.execute("BEGIN")
        except psycopg.OperationalError:
            if not self._db.closed:
                raise
            # Lost while idle: nothing of this transaction ran, so begin it again.
            logger.warning("the job database connection was lost; reconnecting")
            self._db = self._connect()
            self._db.execute("BEGIN")
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            db = self._begin()
            try:
                with db.cursor() as cursor:
                    yield _Transaction(cursor)
                db.execute("COMMIT")
            except BaseException as exc:
                if db.closed:
                    raise JudgeError(
                        ErrorKind.UNAVAILABLE,
                        "the job database connection was lost; retry",
                        retry_after_s=RETRY_AFTER_S,
                    ) from exc
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

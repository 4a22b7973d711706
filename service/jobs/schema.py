"""The jobs' tables, written once for SQLite and PostgreSQL alike (portable SQL)."""

from __future__ import annotations

STAMPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")

TABLES = (
    """CREATE TABLE IF NOT EXISTS job_files (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL, created_at BIGINT NOT NULL, content {blob} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS job_batches (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL, total BIGINT NOT NULL, completed BIGINT NOT NULL DEFAULT 0,
        failed BIGINT NOT NULL DEFAULT 0, output_file_id TEXT, error_file_id TEXT, errors TEXT,
        metadata TEXT, ended_at BIGINT, seq BIGINT NOT NULL, """
    + ", ".join(f"{name}_at BIGINT" for name in STAMPS)
    + ")",
    """CREATE TABLE IF NOT EXISTS job_items (
        batch_id TEXT NOT NULL, line BIGINT NOT NULL, custom_id TEXT NOT NULL, chunk BIGINT NOT NULL,
        body TEXT NOT NULL, state TEXT NOT NULL, status_code BIGINT, response TEXT,
        PRIMARY KEY (batch_id, line))""",
    "CREATE INDEX IF NOT EXISTS job_items_chunk ON job_items (batch_id, chunk, state)",
    """CREATE TABLE IF NOT EXISTS job_chunks (
        batch_id TEXT NOT NULL, chunk BIGINT NOT NULL, state TEXT NOT NULL, claimed_by TEXT,
        lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0, PRIMARY KEY (batch_id, chunk))""",
    "CREATE INDEX IF NOT EXISTS job_chunks_state ON job_chunks (state, lease_expires)",
    "CREATE INDEX IF NOT EXISTS job_batches_owner ON job_batches (owner, seq)",
)

BATCH_COLUMNS = (
    "id, owner, endpoint, input_file_id, completion_window, status, created_at, expires_at, total, completed, "
    "failed, output_file_id, error_file_id, errors, metadata, " + ", ".join(f"{name}_at" for name in STAMPS)
)

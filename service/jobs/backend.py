"""Which store a replica opens: the shared PostgreSQL database when
``JUDGE_JOBS_DATABASE_URL`` is set, else the embedded SQLite file under ``JUDGE_DATA_DIR``."""

from __future__ import annotations

from service.config import Settings
from service.jobs.store import Store


def open_store(settings: Settings) -> Store:
    """The store, open and its tables created; blocking (call it in a thread)."""
    if settings.jobs_database_url is not None:
        # Imported here: a replica on SQLite never loads the PostgreSQL driver.
        from service.jobs.postgres import PostgresStore

        return PostgresStore(settings.jobs_database_url.get_secret_value())
    from service.jobs.sqlite import SQLiteStore

    return SQLiteStore(settings.data_dir / "jobs.sqlite3")

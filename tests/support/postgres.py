"""A real PostgreSQL server for the tests: Debian's binaries (``make postgres`` installs
them), a throwaway cluster in a temporary directory on a free loopback port, and a fresh
database per caller. As root the cluster runs as the ``postgres`` user (initdb refuses
root); otherwise as the current user."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_port

USER = "judge"
# Not a real secret: the tests check that it never shows in a log or an error.
PASSWORD = "s3cret-pg-password"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


class PostgresServer:
    """One running cluster; ``database()`` gives a new empty database's URL."""

    def __init__(self, bin_dir: Path, root: Path, port: int, as_user: list[str]) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.port = port
        self._as_user = as_user
        self._names = itertools.count()

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_user, str(self.bin_dir / tool), *args], capture_output=True, text=True, cwd="/"
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}")

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        name = f"jobs_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def start(self) -> None:
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        shutil.chown(password_file, user=self._owner)
        self.run(
            "initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(password_file),
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c full_page_writes=off"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def _owner(self) -> str:
        return "postgres" if self._as_user else pwd.getpwuid(os.getuid()).pw_name


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started cluster, stopped and deleted afterwards; skips (fails under CI) without
    the binaries."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL is not installed; `make postgres` installs Debian's postgresql-15"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    # Not pytest's tmp_path: its parents are private to this user, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="judge-pg-"))
    server = PostgresServer(bin_dir, root, free_port(), as_user)
    if as_user:
        shutil.chown(root, user="postgres", group="postgres")
    try:
        server.start()
        yield server
    finally:
        server.stop()

"""Fixtures of the cluster tests: the machine's own PostgreSQL server in a temporary folder."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin_dir() -> Path | None:
    """Returns the newest /usr/lib/postgresql/<version>/bin holding initdb, None when absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


@dataclass
class Postgres:
    """A running server: ``uri(db)`` gives a psycopg 3 SQLAlchemy URI with a password."""

    bin_dir: Path
    data_dir: Path
    port: int
    user: str = "facefuse"
    password: str = "s3cret-pw"

    def uri(self, db: str) -> str:
        return (f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}")

    def sql(self, statement: str) -> None:
        """Runs one statement as the superuser on the maintenance database."""
        _as_postgres([str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                      "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                      "-c", statement])

    def fresh_database(self, db: str) -> str:
        """Returns the URI of an empty database of that name (dropped first if it exists)."""
        self.sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        self.sql(f'CREATE DATABASE "{db}" OWNER {self.user}')
        return self.uri(db)


def _as_postgres(cmd: list[str]) -> None:
    # initdb and pg_ctl refuse to run as root; the package's own user runs them.
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stdout[-2000:]}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server on a free port, data in a temp folder, stopped at the end."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                    "(apt-get install postgresql; .ci/run does it)")
    # Not under pytest's temp root: that is private to root, and the server runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="facefuse-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    # trust on 127.0.0.1: the password in the URI is still sent, and a wrong *user* fails
    _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                  "--no-sync"])
    _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "server.log"),
                  "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start"])
    server = Postgres(bin_dir, data, port)
    try:
        server.sql(f"CREATE ROLE {server.user} LOGIN PASSWORD '{server.password}'")
        yield server
    finally:
        _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def pg_database(postgres: Postgres, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Returns a function giving the URI of a fresh database for this test."""
    def make(suffix: str = "") -> str:
        return postgres.fresh_database(f"{request.node.name[:40].lower()}{suffix}")
    return make

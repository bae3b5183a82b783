"""A real PostgreSQL for the tests: `initdb` into a temporary directory, `pg_ctl` on a free loopback port.

The server binaries come from $HAVEDANE_PG_BIN, else Debian's /usr/lib/postgresql/<version>/bin
(the newest), else initdb on PATH. initdb refuses to run as root: as root, the cluster belongs
to `nobody`. Without the binaries the PostgreSQL tests skip, except under CI (CI=true), where
they fail: CI must run them.

Test modules use the fixtures by importing them: `from pg import postgres_server, postgres_url`.
One server serves the whole session (shared by every module that imports the fixtures).
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

# Fast and disposable: a test never survives a crash of PostgreSQL itself.
TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def find_bindir() -> Path | None:
    if os.environ.get("HAVEDANE_PG_BIN"):
        return Path(os.environ["HAVEDANE_PG_BIN"])
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if versions:
        return max(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0])
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throw-away cluster. `settings` go to postgresql.conf (e.g. TEST_SETTINGS)."""

    def __init__(self, bindir: Path, settings: dict[str, str] | None = None, in_memory: bool = False) -> None:
        self.bindir = bindir
        self.settings = settings or {}
        self.port = 0
        # The tests' cluster (fsync off, thrown away) lives in memory where there is a tmpfs:
        # each test's database is a file copy of template1 (~300 files), and removing a
        # hundred of them from disk took 12 s at the end of the run. A benchmark keeps the disk.
        shm = "/dev/shm" if in_memory and os.access("/dev/shm", os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="havedane-pg-", dir=shm))
        self.data = self.root / "data"
        self._names = itertools.count(1)
        self.user: str | None = "nobody" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> PostgresServer:
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.port = free_port()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.data}'",
            "max_connections": "300",
            **self.settings,
        }
        with (self.data / "postgresql.conf").open("a") as f:
            f.writelines(f"{key} = {value}\n" for key, value in conf.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} STRATEGY file_copy")
        return self.url(name)


def start_or_skip(settings: dict[str, str] | None = None) -> PostgresServer:
    bindir = find_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        reason = "PostgreSQL server binaries not found (apt-get install postgresql, or set HAVEDANE_PG_BIN)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return PostgresServer(bindir, settings, in_memory=True).start()


_shared: PostgresServer | None = None
_users = 0


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's server. Each importing module gets its own fixture definition; all
    of them share one server, stopped when the last one is torn down."""
    global _shared, _users
    if _shared is None:
        _shared = start_or_skip(TEST_SETTINGS)
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0:
            _shared.stop()
            _shared = None


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database on the session's server, without the havedane schema."""
    return postgres_server.create_database()

"""The embedded store: SQLite in WAL mode.

Writes go through one writer thread that commits whatever is queued in one
transaction (group commit): each caller's coroutine returns only after the COMMIT
that holds its rows, so a `250` sent after `await add_deliveries()` is never for a
delivery that is not on disk (WAL + synchronous=NORMAL survives a process crash;
FULL would be needed only against power loss of the host).

Reads run on the event loop's own connection: in WAL mode readers never wait for
the writer, and a read of one test is a few index lookups.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from havedane.store.base import (
    RECLAIM_BATCH,
    UNUSED_TESTS,
    Delivery,
    Session,
    Store,
    StoreError,
    Test,
    TooManyTests,
    client_key,
)
from havedane.store.rows import DELIVERY_COLUMNS, SESSION_COLUMNS, delivery_from_row, session_from_row

SCHEMA_VERSION = 1
OTHERS_POLL = 0.1  # seconds between checks for commits by other processes (PRAGMA data_version)

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE tests (
        alias TEXT PRIMARY KEY,
        created REAL NOT NULL,
        client_ip TEXT
    );
    CREATE INDEX tests_created ON tests (created);
    CREATE INDEX tests_client ON tests (client_ip, created);
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        started REAL NOT NULL,
        ended REAL,
        client_ip TEXT NOT NULL,
        client_port INTEGER NOT NULL,
        local_ip TEXT NOT NULL,
        local_port INTEGER NOT NULL,
        helo TEXT,
        starttls INTEGER NOT NULL,
        tls_version TEXT,
        tls_cipher TEXT,
        sni TEXT,
        mail_from TEXT,
        rcpts TEXT NOT NULL,
        probe TEXT,
        alias TEXT,
        outcome TEXT NOT NULL,
        error TEXT,
        chain TEXT
    );
    CREATE INDEX sessions_alias ON sessions (alias);
    CREATE INDEX sessions_client ON sessions (client_ip, started);
    CREATE INDEX sessions_started ON sessions (started);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        alias TEXT NOT NULL,
        probe TEXT NOT NULL,
        received_at REAL NOT NULL,
        client_ip TEXT NOT NULL,
        helo TEXT,
        mail_from TEXT NOT NULL,
        rcpt TEXT NOT NULL,
        tls_version TEXT,
        tls_cipher TEXT,
        sni TEXT,
        session_id TEXT,
        size INTEGER NOT NULL,
        message_id TEXT
    );
    CREATE INDEX deliveries_alias ON deliveries (alias);
    """,
}


Job = Callable[[sqlite3.Connection], Any]


class SchemaTooNew(StoreError):
    pass


def connect(path: Path, busy_timeout: float = 10.0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")  # first: WAL setup may wait for a lock
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def upgrade(path: Path, busy_timeout: float = 10.0) -> tuple[int, int]:
    """Apply pending migrations; returns (from, to). Refuses a schema newer than this code knows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, busy_timeout)
    try:
        if schema_version(conn) == SCHEMA_VERSION:  # the usual case: no write lock needed
            return SCHEMA_VERSION, SCHEMA_VERSION
        conn.execute("BEGIN IMMEDIATE")
        current = schema_version(conn)
        if current > SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            raise SchemaTooNew(
                f"database {path} has schema version {current}, newer than this havedane knows "
                f"({SCHEMA_VERSION}): upgrade havedane"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
        conn.execute("COMMIT")
        return current, SCHEMA_VERSION
    finally:
        conn.close()


def _session_row(s: Session) -> tuple[Any, ...]:
    t = s.tls
    return (
        s.id, s.started, s.ended, s.client_ip, s.client_port, s.local_ip, s.local_port, s.helo,
        int(s.starttls), t and t.version, t and t.cipher, t and t.sni, s.mail_from, json.dumps(s.rcpts),
        s.probe, s.alias, s.outcome.value, s.error, s.chain,
    )  # fmt: skip


def _delivery_row(d: Delivery) -> tuple[Any, ...]:
    t = d.tls
    return (
        d.alias, d.probe, d.received_at, d.client_ip, d.helo, d.mail_from, d.rcpt,
        t and t.version, t and t.cipher, t and t.sni, d.session_id, d.size, d.message_id,
    )  # fmt: skip


class SQLiteStore(Store):
    def __init__(self, path: Path, busy_timeout: float = 10.0) -> None:
        super().__init__()
        self.path = path
        self.busy_timeout = busy_timeout
        self._jobs: queue.SimpleQueue[tuple[Job, asyncio.Future[Any], set[str] | None] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._read: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(upgrade, self.path, self.busy_timeout)
            self._read = connect(self.path, self.busy_timeout)
            write = connect(self.path, self.busy_timeout)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {self.path}: {e}") from e
        self._writer = threading.Thread(target=self._write_loop, args=(write,), name="sqlite-writer", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._read is not None:
            self._read.close()
            self._read = None

    # -- the writer thread -------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            seen = self._others_wrote(conn, None)
            while True:
                try:
                    first = self._jobs.get(timeout=OTHERS_POLL)
                except queue.Empty:
                    seen = self._others_wrote(conn, seen)
                    continue
                if first is None:
                    return
                batch = [first]
                while len(batch) < 512:
                    try:
                        item = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._jobs.put(None)
                        break
                    batch.append(item)
                self._commit(conn, batch)
                seen = self._others_wrote(conn, seen)
        finally:
            conn.close()

    def _others_wrote(self, conn: sqlite3.Connection, seen: int | None) -> int | None:
        """Wake every live page when another process committed. `data_version` of the
        writer's own connection changes only for commits by other connections, and in
        this process no other connection writes: its own writes (already notified by
        alias) do not count, so one process alone never pays for this."""
        try:
            version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return seen
        if seen is not None and version != seen and self._loop is not None:
            self._loop.call_soon_threadsafe(self.changes.notify, None)
        return version

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[Job, asyncio.Future[Any], set[str] | None]]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        changed: set[str] | None = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, fut, aliases in batch:
                # A savepoint per job: one bad job fails alone, the others still commit.
                conn.execute("SAVEPOINT job")
                try:
                    result = job(conn)
                    conn.execute("RELEASE job")
                    results.append((fut, result, None))
                    if aliases is None:
                        changed = None
                    elif changed is not None:
                        changed |= aliases
                except Exception as e:  # noqa: BLE001 - handed to the caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((fut, None, e))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = StoreError(f"database write failed: {e}")
            results = [(fut, None, error) for _, fut, _ in batch]
            changed = set()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle, results, changed)

    def _settle(
        self, results: list[tuple[asyncio.Future[Any], Any, BaseException | None]], changed: set[str] | None
    ) -> None:
        for fut, result, error in results:
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)
        if changed is None or changed:
            self.changes.notify(changed)

    async def _write(self, job: Job, aliases: set[str] | None) -> Any:
        if self._writer is None:
            raise StoreError("store is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put((job, fut, aliases))
        return await fut

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._read is None:
            raise StoreError("store is closed")
        try:
            return self._read.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            raise StoreError(f"database read failed: {e}") from e

    # -- the interface -----------------------------------------------------

    async def create_test(self, test: Test, max_tests: int | None = None, reclaim_before: float | None = None) -> None:
        def job(conn: sqlite3.Connection) -> None:
            if max_tests is not None:
                (count,) = conn.execute("SELECT count(*) FROM tests").fetchone()
                if count >= max_tests and reclaim_before is not None:
                    unused = UNUSED_TESTS.format(mark="?", limit=RECLAIM_BATCH)
                    count -= conn.execute(f"DELETE FROM tests WHERE alias IN ({unused})", (reclaim_before,)).rowcount
                if count >= max_tests:
                    raise TooManyTests(f"{count} tests stored, the limit is {max_tests}")
            conn.execute(
                "INSERT INTO tests (alias, created, client_ip) VALUES (?, ?, ?)",
                (test.alias, test.created, test.client_ip),
            )

        await self._write(job, {test.alias})

    async def get_test(self, alias: str) -> Test | None:
        rows = self._query("SELECT alias, created, client_ip FROM tests WHERE alias = ?", (alias,))
        return Test(*rows[0]) if rows else None

    async def add_deliveries(self, deliveries: list[Delivery]) -> None:
        rows = [_delivery_row(d) for d in deliveries]

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES ({', '.join('?' * 13)})", rows)

        await self._write(job, {d.alias for d in deliveries})

    async def save_session(self, session: Session) -> None:
        row = _session_row(session)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT OR REPLACE INTO sessions ({SESSION_COLUMNS}) VALUES ({', '.join('?' * 19)})", row)

        await self._write(job, {session.alias or client_key(session.client_ip)})

    async def deliveries_for(self, alias: str) -> list[Delivery]:
        rows = self._query(f"SELECT id, {DELIVERY_COLUMNS} FROM deliveries WHERE alias = ? ORDER BY id", (alias,))
        return [delivery_from_row(r) for r in rows]

    async def sessions_for(self, alias: str, client_ips: list[str], since: float) -> list[Session]:
        marks = ", ".join("?" * len(client_ips))
        correlated = f" OR (alias IS NULL AND client_ip IN ({marks}) AND started >= ?)" if client_ips else ""
        rows = self._query(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE alias = ?{correlated} ORDER BY started",
            (alias, *client_ips, since) if client_ips else (alias,),
        )
        return [session_from_row(r, json.loads(r[13])) for r in rows]

    async def recent_tests_from(self, client_ip: str, since: float) -> int:
        rows = self._query("SELECT count(*) FROM tests WHERE client_ip = ? AND created >= ?", (client_ip, since))
        return int(rows[0][0])

    async def prune(self, older_than: float, orphan_sessions_older_than: float, max_orphans: int | None = None) -> int:
        def job(conn: sqlite3.Connection) -> int:
            old = "SELECT alias FROM tests WHERE created < ?"
            conn.execute(f"DELETE FROM deliveries WHERE alias IN ({old})", (older_than,))
            conn.execute(f"DELETE FROM sessions WHERE alias IN ({old})", (older_than,))
            conn.execute("DELETE FROM sessions WHERE alias IS NULL AND started < ?", (orphan_sessions_older_than,))
            if max_orphans is not None:
                conn.execute(
                    "DELETE FROM sessions WHERE alias IS NULL AND id NOT IN "
                    "(SELECT id FROM sessions WHERE alias IS NULL ORDER BY started DESC LIMIT ?)",
                    (max_orphans,),
                )
            return conn.execute("DELETE FROM tests WHERE created < ?", (older_than,)).rowcount

        result: int = await self._write(job, set())
        return result


def open_store(url: str, busy_timeout: float = 10.0) -> Store:
    """A store for `url`: sqlite:///path or postgresql://…"""
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite:///")), busy_timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from havedane.store import postgres  # type: ignore[attr-defined,unused-ignore]

        store: Store = postgres.PostgresStore(url)
        return store
    raise StoreError(f"unsupported store url {url!r}")

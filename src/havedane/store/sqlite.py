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
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from havedane.dns.queries import DnsQuery
from havedane.model import Delivery, Sent, Session, Test
from havedane.store.base import (
    CHECK_HELO,
    KINDS_SHOWN,
    RECLAIM_BATCH,
    SESSIONS_WITHOUT_MAIL,
    UNUSED_TESTS,
    SchemaTooNew,
    Store,
    StoreError,
    StoreFull,
    TestCache,
    TooManyTests,
    client_key,
)
from havedane.store.dnsrows import DNS_COLUMNS, admitted, dns_from_row, dns_row
from havedane.store.rows import (
    DELIVERY_COLUMNS,
    SESSION_COLUMNS,
    bounded_deliveries,
    delivery_from_row,
    merge_sessions,
    session_from_row,
)
from havedane.wiretext import clean_optional as text

SCHEMA_VERSION = 3
OTHERS_POLL = 0.1  # seconds between checks for commits by other processes (PRAGMA data_version)
PRUNE_BATCH = 1000  # rows per pruning transaction: tens of milliseconds of the writer each

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
    # The tests a session tied by client address may belong to (Store.tests_sent_from).
    2: "CREATE INDEX deliveries_client ON deliveries (client_ip, received_at);",
    # DNS queries from dnstap (havedane.dnstap): a test's by alias, zone-level ones
    # (alias NULL) by resolver address and time.
    3: """
    CREATE TABLE dns_queries (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        resolver TEXT NOT NULL,
        transport TEXT NOT NULL,
        qname TEXT NOT NULL,
        qtype TEXT NOT NULL,
        dnssec_ok INTEGER NOT NULL,
        rcode TEXT,
        server TEXT,
        alias TEXT
    );
    CREATE INDEX dns_queries_alias ON dns_queries (alias, id);
    CREATE INDEX dns_queries_resolver ON dns_queries (resolver, at);
    CREATE INDEX dns_queries_at ON dns_queries (at);
    """,
}


Job = Callable[[sqlite3.Connection], Any]
Item = tuple[Job, asyncio.Future[Any], set[str] | None]
log = logging.getLogger("havedane.store")


def _full(e: sqlite3.Error) -> bool:
    return bool(getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL)


def store_error(e: sqlite3.Error) -> StoreError:
    """SQLite's error as the store's: a full disk (SQLITE_FULL) is said as such, not as "busy"."""
    if _full(e):
        return StoreFull(f"the disk is full: {e}")
    return StoreError(f"database write failed: {e}")


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path, busy_timeout)
    except (OSError, sqlite3.Error) as e:
        raise StoreError(f"cannot open {path}: {e}") from e
    try:
        return _migrate(conn, path)
    except sqlite3.Error as e:
        raise store_error(e) if _full(e) else StoreError(f"cannot open {path}: {e}") from e
    finally:
        conn.close()


def _migrate(conn: sqlite3.Connection, path: Path) -> tuple[int, int]:
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


def _session_row(s: Session) -> tuple[Any, ...]:
    t = s.tls
    return (
        s.id, s.started, s.ended, text(s.client_ip), s.client_port, text(s.local_ip), s.local_port, text(s.helo),
        int(s.starttls), t and text(t.version), t and text(t.cipher), t and text(t.sni), text(s.mail_from),
        json.dumps([text(r) for r in s.rcpts]), s.probe, s.alias, s.outcome.value, text(s.error), s.chain,
    )  # fmt: skip


def _delivery_row(d: Delivery) -> tuple[Any, ...]:
    t = d.tls
    return (
        d.alias, d.probe, d.received_at, text(d.client_ip), text(d.helo), text(d.mail_from), text(d.rcpt),
        t and text(t.version), t and text(t.cipher), t and text(t.sni), d.session_id, d.size, text(d.message_id),
    )  # fmt: skip


class SQLiteStore(Store):
    def __init__(self, path: Path, busy_timeout: float = 10.0, write_timeout: float = 30.0) -> None:
        super().__init__()
        self.path = path
        self.busy_timeout = busy_timeout
        self.write_timeout = write_timeout
        self._jobs: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._died: str | None = None  # why the writer thread stopped, if it did
        self._local = threading.local()  # each worker thread's read connection (_read_off_loop)
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._read: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tests = TestCache()  # see TestCache: a read saved per RCPT

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(upgrade, self.path, self.busy_timeout)
        try:
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
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- the writer thread -------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        batch: list[Item] = []
        try:
            seen = self._others_wrote(conn, None)
            checked = time.monotonic()
            while True:
                batch = []
                try:
                    first = self._jobs.get(timeout=OTHERS_POLL)
                except queue.Empty:
                    seen = self._others_wrote(conn, seen)
                    checked = time.monotonic()
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
                if time.monotonic() - checked >= OTHERS_POLL:  # under load too, not after every commit
                    seen = self._others_wrote(conn, seen)
                    checked = time.monotonic()
        except BaseException as e:
            # Whatever killed the writer, no caller may wait for it forever: fail what it
            # held and what is queued, and every later write at once (`_write`).
            self._died = f"{type(e).__name__}: {e}"
            log.error("the database writer stopped (%s): every write fails until havedane restarts", self._died)
            self._fail_pending(batch)
        finally:
            conn.close()

    def _fail_pending(self, batch: list[Item]) -> None:
        items: list[Any] = list(batch)
        while True:
            try:
                items.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        error = StoreError(f"the database writer stopped ({self._died})")
        failed: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = [
            (item[1], None, error) for item in items if isinstance(item, tuple) and len(item) == 3
        ]
        if self._loop is not None and failed:
            self._loop.call_soon_threadsafe(self._settle, failed, set())

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

    def _commit(self, conn: sqlite3.Connection, batch: list[Item]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        changed: set[str] | None = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            done = self._run(conn, batch, savepoints=False)
            if done is None:
                # A job failed: the batch again, a savepoint per job, so that it fails alone and
                # the others still commit. (Without a failure the savepoints were half the
                # writer's statements: the first pass goes without them.)
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                done = self._run(conn, batch, savepoints=True)
            assert done is not None
            results, changed = done
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = store_error(e)
            results = [(fut, None, error) for _, fut, _ in batch]
            changed = set()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle, results, changed)

    def _run(
        self, conn: sqlite3.Connection, batch: list[Item], savepoints: bool
    ) -> tuple[list[tuple[asyncio.Future[Any], Any, BaseException | None]], set[str] | None] | None:
        """Each job of the batch in the open transaction: (results, aliases changed), or None when
        a job failed and `savepoints` is off (the caller rolls back and runs them with savepoints)."""
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        changed: set[str] | None = set()
        for job, fut, aliases in batch:
            if savepoints:
                conn.execute("SAVEPOINT job")
            try:
                result = job(conn)
                if savepoints:
                    conn.execute("RELEASE job")
                results.append((fut, result, None))
                if aliases is None:
                    changed = None
                elif changed is not None:
                    changed |= aliases
            except Exception as e:  # noqa: BLE001 - handed to the caller
                if not conn.in_transaction:
                    raise  # SQLite rolled the whole transaction back (e.g. SQLITE_FULL): all fail
                if not savepoints:
                    return None
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                results.append((fut, None, store_error(e) if isinstance(e, sqlite3.Error) else e))
        return results, changed

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
        if self._died is not None or not self._writer.is_alive():
            raise StoreError(f"the database writer stopped ({self._died}): restart havedane")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((job, fut, aliases))
        # (A timer on the future itself: asyncio.wait_for costs a task's worth of futures and
        # callbacks per write, on the loop that serves SMTP.)
        timer = loop.call_later(self.write_timeout, self._expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, fut: asyncio.Future[Any]) -> None:
        """A frozen disk or a lock held elsewhere. The job may still commit later (`_settle`
        skips a settled future): the caller answers "try again" (451/503), so at worst a sender
        delivers twice."""
        if not fut.done():
            fut.set_exception(
                StoreError(f"database write did not finish within {self.write_timeout:g} s ([store] write_timeout)")
            )

    async def _read_off_loop(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """A read that may touch many rows (a report): in a worker thread, on that thread's
        own connection, so the event loop serving SMTP is never held by it."""
        if self._read is None:
            raise StoreError("store is closed")

        def run() -> list[tuple[Any, ...]]:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            try:
                if conn is None:
                    conn = self._local.conn = connect(self.path, self.busy_timeout)
                    with self._readers_lock:
                        self._readers.append(conn)
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"database read failed: {e}") from e

        return await asyncio.to_thread(run)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._read is None:
            raise StoreError("store is closed")
        try:
            return self._read.execute(sql, params).fetchall()
        except sqlite3.Error as e:
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
                (test.alias, test.created, text(test.client_ip)),
            )

        await self._write(job, {test.alias})

    async def get_test(self, alias: str) -> Test | None:
        cached = self._tests.get(alias)
        if cached is not None:
            return cached
        rows = self._query("SELECT alias, created, client_ip FROM tests WHERE alias = ?", (alias,))
        if not rows:
            return None
        return self._tests.put(Test(*rows[0]))

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

    async def deliveries_for(self, alias: str, per_probe: int | None = None) -> list[Delivery]:
        if per_probe is None:
            sql = f"SELECT id, {DELIVERY_COLUMNS} FROM deliveries WHERE alias = ? ORDER BY id"
            rows = await self._read_off_loop(sql, (alias,))
        else:
            rows = await self._read_off_loop(bounded_deliveries("?"), (alias, per_probe, KINDS_SHOWN))
        return [delivery_from_row(r) for r in rows]

    async def delivery_totals(self, alias: str) -> dict[str, int]:
        sql = "SELECT probe, count(*) FROM deliveries WHERE alias = ? GROUP BY probe"
        rows = await self._read_off_loop(sql, (alias,))
        return {probe: int(count) for probe, count in rows}

    def _sessions_where(
        self, alias: str, client_ips: list[str], since: float, until: float | None
    ) -> tuple[str, tuple[Any, ...]]:
        if not client_ips:
            return "(alias = ?)", (alias,)
        marks = ", ".join("?" * len(client_ips))
        correlated = (
            f" OR (alias IS NULL AND client_ip IN ({marks}) AND started BETWEEN ? AND ?"
            " AND lower(coalesce(helo, '')) <> ?)"
        )
        until = math.inf if until is None else until
        return f"(alias = ?{correlated})", (alias, *map(text, client_ips), since, until, CHECK_HELO)

    async def sessions_for(
        self, alias: str, client_ips: list[str], since: float, until: float | None = None, limit: int | None = None
    ) -> list[Session]:
        where, params = self._sessions_where(alias, client_ips, since, until)
        select = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {where}"
        if limit is None:
            rows = await self._read_off_loop(f"{select} ORDER BY started", params)
            return [session_from_row(r, json.loads(r[13])) for r in rows]
        newest = await self._read_off_loop(f"{select} ORDER BY started DESC, id DESC LIMIT ?", (*params, limit))
        quiet = await self._read_off_loop(
            f"{select} AND mail_from IS NULL ORDER BY started, id LIMIT ?", (*params, SESSIONS_WITHOUT_MAIL)
        )
        return merge_sessions(*([session_from_row(r, json.loads(r[13])) for r in rows] for rows in (newest, quiet)))

    async def session_total(self, alias: str, client_ips: list[str], since: float, until: float | None = None) -> int:
        where, params = self._sessions_where(alias, client_ips, since, until)
        rows = await self._read_off_loop(f"SELECT count(*) FROM sessions WHERE {where}", params)
        return int(rows[0][0])

    async def tests_sent_from(self, client_ips: list[str], since: float, until: float) -> list[Sent]:
        if not client_ips:
            return []
        rows = self._query(
            "SELECT d.alias, d.client_ip, t.created,"
            " (SELECT min(received_at) FROM deliveries f WHERE f.alias = d.alias)"
            " FROM (SELECT DISTINCT alias, client_ip FROM deliveries"
            f" WHERE client_ip IN ({', '.join('?' * len(client_ips))}) AND received_at BETWEEN ? AND ?) AS d"
            " JOIN tests t ON t.alias = d.alias ORDER BY d.alias, d.client_ip",
            (*map(text, client_ips), since, until),
        )
        return [Sent(*r) for r in rows]

    async def usage(self, alias: str) -> tuple[dict[str, int], int]:
        probes = self._query("SELECT probe, count(*) FROM deliveries WHERE alias = ? GROUP BY probe", (alias,))
        sessions = self._query("SELECT count(*) FROM sessions WHERE alias = ?", (alias,))
        return {str(p): int(n) for p, n in probes}, int(sessions[0][0])

    async def recent_tests_from(self, client_ip: str, since: float) -> int:
        rows = self._query("SELECT count(*) FROM tests WHERE client_ip = ? AND created >= ?", (text(client_ip), since))
        return int(rows[0][0])

    async def prune(self, older_than: float, orphan_sessions_older_than: float, max_orphans: int | None = None) -> int:
        # In batches of PRUNE_BATCH rows, each its own job: the writer commits deliveries
        # queued meanwhile between two batches instead of after the whole prune.
        old = "SELECT alias FROM tests WHERE created < ?"
        await self._delete("deliveries", f"alias IN ({old})", (older_than,))
        await self._delete("sessions", f"alias IN ({old})", (older_than,))
        await self._delete("sessions", "alias IS NULL AND started < ?", (orphan_sessions_older_than,))
        if max_orphans is not None:
            # The newest `max_orphans` (by started, then id) stay: everything up to the first one beyond them goes.
            rows = await self._read_off_loop(
                "SELECT started, id FROM sessions WHERE alias IS NULL ORDER BY started DESC, id DESC LIMIT 1 OFFSET ?",
                (max_orphans,),
            )
            if rows:
                await self._delete("sessions", "alias IS NULL AND (started, id) <= (?, ?)", rows[0])
        deleted = await self._delete("tests", "created < ?", (older_than,), key="alias")
        self._tests.clear()
        return deleted

    async def add_dns_queries(self, queries: list[DnsQuery], per_test: int) -> int:
        aliases = sorted({q.alias for q in queries if q.alias is not None})

        def job(conn: sqlite3.Connection) -> int:
            marks = ", ".join("?" * len(aliases))
            tests: set[str] = set()
            held: list[tuple[str, int]] = []
            if aliases:
                tests = {r[0] for r in conn.execute(f"SELECT alias FROM tests WHERE alias IN ({marks})", aliases)}
                sql = f"SELECT alias, count(*) FROM dns_queries WHERE alias IN ({marks}) GROUP BY alias"
                held = conn.execute(sql, aliases).fetchall()
            kept = admitted(queries, {a: int(n) for a, n in held}, tests, per_test)
            conn.executemany(
                f"INSERT INTO dns_queries ({DNS_COLUMNS}) VALUES ({', '.join('?' * 9)})", [dns_row(q) for q in kept]
            )
            return len(kept)

        kept: int = await self._write(job, set(aliases))
        return kept

    async def dns_queries_for(
        self, alias: str, resolvers: list[str], since: float, until: float | None = None, limit: int = 1000
    ) -> list[DnsQuery]:
        select = f"SELECT id, {DNS_COLUMNS} FROM dns_queries"
        rows = await self._read_off_loop(f"{select} WHERE alias = ?", (alias,))
        if resolvers:
            rows += await self._read_off_loop(
                f"{select} WHERE alias IS NULL AND resolver IN ({', '.join('?' * len(resolvers))})"
                " AND at BETWEEN ? AND ? ORDER BY at, id LIMIT ?",
                (*resolvers, since, math.inf if until is None else until, limit),
            )
        return sorted((dns_from_row(r) for r in rows), key=lambda q: (q.time, q.id or 0))

    async def prune_dns(self, zone_older_than: float, max_zone: int) -> int:
        gone = await self._delete("dns_queries", "alias IS NOT NULL AND alias NOT IN (SELECT alias FROM tests)", ())
        gone += await self._delete("dns_queries", "alias IS NULL AND at < ?", (zone_older_than,))
        rows = await self._read_off_loop(
            "SELECT at, id FROM dns_queries WHERE alias IS NULL ORDER BY at DESC, id DESC LIMIT 1 OFFSET ?", (max_zone,)
        )
        if rows:
            gone += await self._delete("dns_queries", "alias IS NULL AND (at, id) <= (?, ?)", rows[0])
        return gone

    async def _delete(self, table: str, where: str, params: tuple[Any, ...], key: str = "rowid") -> int:
        sql = f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where} LIMIT {PRUNE_BATCH})"
        total = 0
        while True:
            deleted: int = await self._write(lambda conn: conn.execute(sql, params).rowcount, set())
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

"""The embedded store: SQLite in WAL mode.

Writes go through one writer thread that commits whatever is queued in one
transaction (group commit, store/sqlite_writer.py): each caller's coroutine returns
only after the COMMIT that holds its rows. The file, its schema and its migrations
are in store/sqlite_schema.py.

Reads run on the event loop's own connection: in WAL mode readers never wait for
the writer, and a read of one test is a few index lookups.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import threading
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
    Store,
    StoreError,
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
from havedane.store.sqlite_schema import SCHEMA_VERSION, connect, upgrade
from havedane.store.sqlite_writer import Job, Writer
from havedane.wiretext import clean_optional as text

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "upgrade"]

PRUNE_BATCH = 1000  # rows per pruning transaction: tens of milliseconds of the writer each


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
        self._local = threading.local()  # each worker thread's read connection (_read_off_loop)
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer: Writer | None = None
        self._read: sqlite3.Connection | None = None
        self._tests = TestCache()  # see TestCache: a read saved per RCPT

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(upgrade, self.path, self.busy_timeout)
        try:
            self._read = connect(self.path, self.busy_timeout)
            write = connect(self.path, self.busy_timeout)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {self.path}: {e}") from e
        self._writer = Writer(write, loop, self.changes.notify, self.write_timeout)
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._read is not None:
            self._read.close()
            self._read = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    async def _write(self, job: Job, aliases: set[str] | None) -> Any:
        if self._writer is None:
            raise StoreError("store is closed")
        return await self._writer.write(job, aliases)

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

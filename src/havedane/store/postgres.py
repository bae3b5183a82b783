"""The store for several hosts: PostgreSQL through psycopg 3 and its connection pool.

Same semantics as the SQLite store. Every write is one transaction that also
NOTIFYs the alias it touched (store/notify.py): PostgreSQL delivers a notification
only when its transaction commits, so a listener never hears of a row it cannot
read yet. Each call commits before it returns: the receiver's `250` follows the
COMMIT (with the default synchronous_commit=on, after the WAL is flushed).

The schema, its migrations (`havedane db upgrade`, never implicit) and the errors
are in store/postgres_schema.py; `open` refuses a schema version it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from havedane.dns.queries import DnsQuery
from havedane.model import Delivery, Sent, Session, Test
from havedane.store import notify, postgres_schema
from havedane.store.base import (
    CHECK_HELO,
    CLIENT_PREFIX,
    KINDS_SHOWN,
    RECLAIM_BATCH,
    SESSIONS_WITHOUT_MAIL,
    UNUSED_TESTS,
    Store,
    StoreError,
    TestCache,
    TooManyTests,
)
from havedane.store.dnsrows import DNS_COLUMNS, admitted, dns_from_row, dns_row
from havedane.store.postgres_schema import DNS_LOCK, PRUNE_LOCK, SCHEMA_VERSION, TESTS_LOCK, failure, upgrade, where
from havedane.store.rows import (
    DELIVERY_COLUMNS,
    SESSION_COLUMNS,
    bounded_deliveries,
    delivery_from_row,
    merge_sessions,
    session_from_row,
)
from havedane.wiretext import clean_optional as text

__all__ = ["SCHEMA_VERSION", "PostgresStore", "upgrade"]

NOTIFY = f"SELECT pg_notify('{notify.CHANNEL}', %s)"
# The receiver's writes are one statement each, the NOTIFY included: one round trip, and
# one implicit transaction, so the notification is sent if and only if the rows commit.
SAVE_SESSION = (
    f"WITH saved AS (INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({', '.join(['%s'] * 19)})"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in SESSION_COLUMNS.split(", ")[1:])
    + " RETURNING alias, client_ip)"
    + f" SELECT pg_notify('{notify.CHANNEL}', coalesce(alias, '{CLIENT_PREFIX}' || client_ip)) FROM saved"
)


def add_deliveries_sql(count: int) -> str:
    rows = ", ".join([f"({', '.join(['%s'] * 13)})"] * count)
    return (
        f"WITH added AS (INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES {rows} RETURNING alias)"
        f" SELECT pg_notify('{notify.CHANNEL}', alias) FROM (SELECT DISTINCT alias FROM added) AS changed"
    )


def _session_row(s: Session) -> tuple[Any, ...]:
    t = s.tls
    return (
        s.id, s.started, s.ended, text(s.client_ip), s.client_port, text(s.local_ip), s.local_port, text(s.helo),
        s.starttls, t and text(t.version), t and text(t.cipher), t and text(t.sni), text(s.mail_from),
        [text(r) for r in s.rcpts], s.probe, s.alias, s.outcome.value, text(s.error), s.chain,
    )  # fmt: skip


def _delivery_row(d: Delivery) -> tuple[Any, ...]:
    t = d.tls
    return (
        d.alias, d.probe, d.received_at, text(d.client_ip), text(d.helo), text(d.mail_from), text(d.rcpt),
        t and text(t.version), t and text(t.cipher), t and text(t.sni), d.session_id, d.size, text(d.message_id),
    )  # fmt: skip


Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class PostgresStore(Store):
    def __init__(self, url: str, min_size: int = 1, max_size: int = 10, write_timeout: float = 30.0) -> None:
        super().__init__()
        self.url = url
        self.write_timeout = write_timeout
        self.feed = notify.Feed(lambda changes: notify.listen(notify.with_keepalive(url), changes))
        self.changes = self.feed
        self._min_size = min_size
        self._max_size = max_size
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._tests = TestCache()  # see TestCache: a read saved per RCPT

    async def open(self) -> None:
        # One plain connection first: its error says why (the pool's would only say "timeout").
        try:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                found = await postgres_schema.schema_version(conn)
        except psycopg.Error as e:
            raise failure(self.url, e) from e
        postgres_schema.check(self.url, found)
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            notify.with_keepalive(self.url),
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={"autocommit": True},
            configure=self._configure,
            timeout=10,
            name="havedane",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=10)
        except psycopg.Error as e:
            await pool.close()
            raise failure(self.url, e) from e
        self._pool = pool
        self.feed.start()

    async def close(self) -> None:
        await self.feed.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _configure(self, conn: Conn) -> None:
        # The server gives up on a statement (a lock wait included) after the bound too.
        await conn.execute(f"SET statement_timeout = {int(self.write_timeout * 1000)}")

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        if self._pool is None:
            raise StoreError("store is closed")
        try:
            # Bounded on this side as well: a server that stops answering never hangs a client.
            async with asyncio.timeout(self.write_timeout), self._pool.connection() as conn:
                yield conn
        except psycopg.Error as e:
            raise failure(self.url, e) from e
        except TimeoutError:
            raise StoreError(
                f"PostgreSQL {where(self.url)}: no answer within {self.write_timeout:g} s ([store] write_timeout)"
            ) from None

    @contextlib.asynccontextmanager
    async def _transaction(self, changed: set[str] | None) -> AsyncIterator[psycopg.AsyncCursor[tuple[Any, ...]]]:
        """One transaction that NOTIFYs `changed` (None: every test) when it commits."""
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur
            for payload in sorted(changed) if changed is not None else [notify.EVERYONE]:
                await cur.execute(NOTIFY, (payload,))

    async def _rows(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    # -- the interface -----------------------------------------------------

    async def create_test(self, test: Test, max_tests: int | None = None, reclaim_before: float | None = None) -> None:
        async with self._transaction({test.alias}) as cur:
            if max_tests is not None:
                # Serialise creations across processes, so that the bound holds exactly.
                await cur.execute("SELECT pg_advisory_xact_lock(%s)", (TESTS_LOCK,))
                await cur.execute("SELECT count(*) FROM tests")
                row = await cur.fetchone()
                count = int(row[0]) if row else 0
                if count >= max_tests and reclaim_before is not None:
                    unused = UNUSED_TESTS.format(mark="%s", limit=RECLAIM_BATCH)
                    await cur.execute(f"DELETE FROM tests WHERE alias IN ({unused})", (reclaim_before,))
                    count -= cur.rowcount
                    self._tests.clear()
                if count >= max_tests:
                    raise TooManyTests(f"{count} tests stored, the limit is {max_tests}")
            await cur.execute(
                "INSERT INTO tests (alias, created, client_ip) VALUES (%s, %s, %s)",
                (test.alias, test.created, text(test.client_ip)),
            )

    async def get_test(self, alias: str) -> Test | None:
        cached = self._tests.get(alias)
        if cached is not None:
            return cached
        rows = await self._rows("SELECT alias, created, client_ip FROM tests WHERE alias = %s", (alias,))
        if not rows:
            return None
        return self._tests.put(Test(*rows[0]))

    async def add_deliveries(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        params = [value for d in deliveries for value in _delivery_row(d)]
        async with self._connection() as conn:
            await conn.execute(add_deliveries_sql(len(deliveries)), params)

    async def save_session(self, session: Session) -> None:
        async with self._connection() as conn:
            await conn.execute(SAVE_SESSION, _session_row(session))

    async def deliveries_for(self, alias: str, per_probe: int | None = None) -> list[Delivery]:
        if per_probe is None:
            sql = f"SELECT id, {DELIVERY_COLUMNS} FROM deliveries WHERE alias = %s ORDER BY id"
            rows = await self._rows(sql, (alias,))
        else:
            rows = await self._rows(bounded_deliveries("%s"), (alias, per_probe, KINDS_SHOWN))
        return [delivery_from_row(r) for r in rows]

    async def delivery_totals(self, alias: str) -> dict[str, int]:
        rows = await self._rows("SELECT probe, count(*) FROM deliveries WHERE alias = %s GROUP BY probe", (alias,))
        return {probe: int(count) for probe, count in rows}

    @staticmethod
    def _sessions_where(
        alias: str, client_ips: list[str], since: float, until: float | None
    ) -> tuple[str, tuple[Any, ...]]:
        return (
            "(alias = %s OR (alias IS NULL AND client_ip = ANY(%s) AND started BETWEEN %s AND %s"
            " AND lower(coalesce(helo, '')) <> %s))",
            (alias, [text(ip) for ip in client_ips], since, math.inf if until is None else until, CHECK_HELO),
        )

    async def sessions_for(
        self, alias: str, client_ips: list[str], since: float, until: float | None = None, limit: int | None = None
    ) -> list[Session]:
        where, params = self._sessions_where(alias, client_ips, since, until)
        select = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {where}"
        if limit is None:
            return [session_from_row(r, list(r[13])) for r in await self._rows(f"{select} ORDER BY started", params)]
        newest = await self._rows(f"{select} ORDER BY started DESC, id DESC LIMIT %s", (*params, limit))
        quiet = await self._rows(
            f"{select} AND mail_from IS NULL ORDER BY started, id LIMIT %s", (*params, SESSIONS_WITHOUT_MAIL)
        )
        return merge_sessions(*([session_from_row(r, list(r[13])) for r in rows] for rows in (newest, quiet)))

    async def session_total(self, alias: str, client_ips: list[str], since: float, until: float | None = None) -> int:
        where, params = self._sessions_where(alias, client_ips, since, until)
        rows = await self._rows(f"SELECT count(*) FROM sessions WHERE {where}", params)
        return int(rows[0][0])

    async def tests_sent_from(self, client_ips: list[str], since: float, until: float) -> list[Sent]:
        if not client_ips:
            return []
        rows = await self._rows(
            "SELECT d.alias, d.client_ip, t.created,"
            " (SELECT min(received_at) FROM deliveries f WHERE f.alias = d.alias)"
            " FROM (SELECT DISTINCT alias, client_ip FROM deliveries"
            " WHERE client_ip = ANY(%s) AND received_at BETWEEN %s AND %s) AS d"
            " JOIN tests t ON t.alias = d.alias ORDER BY d.alias, d.client_ip",
            ([text(ip) for ip in client_ips], since, until),
        )
        return [Sent(*r) for r in rows]

    async def usage(self, alias: str) -> tuple[dict[str, int], int]:
        probes = await self._rows("SELECT probe, count(*) FROM deliveries WHERE alias = %s GROUP BY probe", (alias,))
        sessions = await self._rows("SELECT count(*) FROM sessions WHERE alias = %s", (alias,))
        return {str(p): int(n) for p, n in probes}, int(sessions[0][0])

    async def recent_tests_from(self, client_ip: str, since: float) -> int:
        rows = await self._rows(
            "SELECT count(*) FROM tests WHERE client_ip = %s AND created >= %s", (text(client_ip), since)
        )
        return int(rows[0][0])

    async def prune(self, older_than: float, orphan_sessions_older_than: float, max_orphans: int | None = None) -> int:
        self._tests.clear()
        async with self._transaction(set()) as cur:
            # Every process prunes on its own schedule; one at a time is enough.
            await cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,))
            row = await cur.fetchone()
            if not row or not row[0]:
                return 0
            old = "SELECT alias FROM tests WHERE created < %s"
            await cur.execute(f"DELETE FROM deliveries WHERE alias IN ({old})", (older_than,))
            await cur.execute(f"DELETE FROM sessions WHERE alias IN ({old})", (older_than,))
            await cur.execute(
                "DELETE FROM sessions WHERE alias IS NULL AND started < %s", (orphan_sessions_older_than,)
            )
            if max_orphans is not None:
                await cur.execute(
                    "DELETE FROM sessions WHERE alias IS NULL AND id NOT IN "
                    "(SELECT id FROM sessions WHERE alias IS NULL ORDER BY started DESC LIMIT %s)",
                    (max_orphans,),
                )
            await cur.execute("DELETE FROM tests WHERE created < %s", (older_than,))
            return cur.rowcount

    async def add_dns_queries(self, queries: list[DnsQuery], per_test: int) -> int:
        aliases = sorted({q.alias for q in queries if q.alias is not None})
        async with self._transaction(set(aliases)) as cur:
            if aliases:
                # Readers next to several name servers add a test's queries at once: one at a
                # time, so that the bound per test holds exactly.
                await cur.execute("SELECT pg_advisory_xact_lock(%s)", (DNS_LOCK,))
                await cur.execute("SELECT alias FROM tests WHERE alias = ANY(%s)", (aliases,))
                tests = {r[0] for r in await cur.fetchall()}
                await cur.execute(
                    "SELECT alias, count(*) FROM dns_queries WHERE alias = ANY(%s) GROUP BY alias", (aliases,)
                )
                held = {r[0]: int(r[1]) for r in await cur.fetchall()}
            else:
                tests, held = set(), {}
            kept = admitted(queries, held, tests, per_test)
            if kept:
                rows = ", ".join([f"({', '.join(['%s'] * 9)})"] * len(kept))
                params = [v for q in kept for v in dns_row(q)]
                await cur.execute(f"INSERT INTO dns_queries ({DNS_COLUMNS}) VALUES {rows}", params)
            return len(kept)

    async def dns_queries_for(
        self, alias: str, resolvers: list[str], since: float, until: float | None = None, limit: int = 1000
    ) -> list[DnsQuery]:
        select = f"SELECT id, {DNS_COLUMNS} FROM dns_queries"
        rows = await self._rows(f"{select} WHERE alias = %s", (alias,))
        if resolvers:
            rows += await self._rows(
                f"{select} WHERE alias IS NULL AND resolver = ANY(%s) AND at BETWEEN %s AND %s"
                " ORDER BY at, id LIMIT %s",
                (resolvers, since, math.inf if until is None else until, limit),
            )
        return sorted((dns_from_row(r) for r in rows), key=lambda q: (q.time, q.id or 0))

    async def prune_dns(self, zone_older_than: float, max_zone: int) -> int:
        async with self._transaction(set()) as cur:
            await cur.execute(
                "DELETE FROM dns_queries WHERE alias IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM tests t WHERE t.alias = dns_queries.alias)"
            )
            gone = cur.rowcount
            await cur.execute("DELETE FROM dns_queries WHERE alias IS NULL AND at < %s", (zone_older_than,))
            gone += cur.rowcount
            await cur.execute(
                "DELETE FROM dns_queries WHERE alias IS NULL AND id NOT IN "
                "(SELECT id FROM dns_queries WHERE alias IS NULL ORDER BY at DESC, id DESC LIMIT %s)",
                (max_zone,),
            )
            return gone + cur.rowcount

"""The PostgreSQL database: its schema and migrations, its advisory locks, and
psycopg's errors said as the store's.

The schema is versioned in `schema_version` and migrated by `havedane db upgrade`
(`upgrade`), never implicitly: with several hosts the operator chooses when. A
process checks the version at open (`check`) and refuses a schema it does not know.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.conninfo

from havedane.store import notify
from havedane.store.base import SchemaTooNew, StoreError, StoreFull

SCHEMA_VERSION = 3

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE tests (
            alias text PRIMARY KEY,
            created double precision NOT NULL,
            client_ip text
        )""",
        "CREATE INDEX tests_created ON tests (created)",
        "CREATE INDEX tests_client ON tests (client_ip, created)",
        """CREATE TABLE sessions (
            id text PRIMARY KEY,
            started double precision NOT NULL,
            ended double precision,
            client_ip text NOT NULL,
            client_port integer NOT NULL,
            local_ip text NOT NULL,
            local_port integer NOT NULL,
            helo text,
            starttls boolean NOT NULL,
            tls_version text,
            tls_cipher text,
            sni text,
            mail_from text,
            rcpts text[] NOT NULL,
            probe text,
            alias text,
            outcome text NOT NULL,
            error text,
            chain text
        )""",
        "CREATE INDEX sessions_alias ON sessions (alias)",
        "CREATE INDEX sessions_client ON sessions (client_ip, started)",
        "CREATE INDEX sessions_started ON sessions (started)",
        """CREATE TABLE deliveries (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            alias text NOT NULL,
            probe text NOT NULL,
            received_at double precision NOT NULL,
            client_ip text NOT NULL,
            helo text,
            mail_from text NOT NULL,
            rcpt text NOT NULL,
            tls_version text,
            tls_cipher text,
            sni text,
            session_id text,
            size integer NOT NULL,
            message_id text
        )""",
        "CREATE INDEX deliveries_alias ON deliveries (alias, id)",
    ),
    # The tests a session tied by client address may belong to (Store.tests_sent_from).
    2: ("CREATE INDEX deliveries_client ON deliveries (client_ip, received_at)",),
    # DNS queries from dnstap (havedane.dnstap): a test's by alias, zone-level ones
    # (alias NULL) by resolver address and time.
    3: (
        """CREATE TABLE dns_queries (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at double precision NOT NULL,
            resolver text NOT NULL,
            transport text NOT NULL,
            qname text NOT NULL,
            qtype text NOT NULL,
            dnssec_ok boolean NOT NULL,
            rcode text,
            server text,
            alias text
        )""",
        "CREATE INDEX dns_queries_alias ON dns_queries (alias, id)",
        "CREATE INDEX dns_queries_resolver ON dns_queries (resolver, at)",
        "CREATE INDEX dns_queries_at ON dns_queries (at)",
    ),
}

# Advisory lock keys (any constants; they only have to differ from each other).
MIGRATION_LOCK = 0x68617665_64616E01
TESTS_LOCK = 0x68617665_64616E02
PRUNE_LOCK = 0x68617665_64616E03
DNS_LOCK = 0x68617665_64616E04


def where(url: str) -> str:
    """host:port/dbname of a conninfo, for messages: never the password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparsable url)"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def failure(url: str, e: psycopg.Error) -> StoreError:
    if isinstance(e, psycopg.errors.DiskFull):  # SQLSTATE 53100: said as such, not as "busy"
        return StoreFull(f"PostgreSQL {where(url)}: the disk is full: {notify.first_line(e)}")
    return StoreError(f"PostgreSQL {where(url)}: {notify.first_line(e)}")


def schema_message(url: str, found: int) -> StoreError:
    if found > SCHEMA_VERSION:
        return SchemaTooNew(
            f"PostgreSQL {where(url)} has schema version {found}, newer than this havedane knows "
            f"({SCHEMA_VERSION}): upgrade havedane"
        )
    return StoreError(
        f"PostgreSQL {where(url)} has schema version {found}, this havedane needs {SCHEMA_VERSION}: "
        "run `havedane db upgrade`"
    )


def _version_sync(conn: psycopg.Connection[Any]) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def upgrade(url: str) -> tuple[int, int]:
    """Apply pending migrations in one transaction; returns (from, to).
    Refuses a schema newer than this code knows. Concurrent upgrades wait for each other."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:  # one transaction, committed on leaving
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            current = _version_sync(conn)
            if current > SCHEMA_VERSION:
                raise schema_message(url, current)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
    except psycopg.Error as e:
        raise failure(url, e) from e
    return current, SCHEMA_VERSION


async def schema_version(conn: psycopg.AsyncConnection[Any]) -> int:
    """The schema version of the database `conn` is connected to (0: none yet)."""
    try:
        cur = await conn.execute("SELECT max(version) FROM schema_version")
    except psycopg.errors.UndefinedTable:
        return 0
    row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def check(url: str, found: int) -> None:
    """Raises unless `found` is the schema version this code knows."""
    if found != SCHEMA_VERSION:
        raise schema_message(url, found)

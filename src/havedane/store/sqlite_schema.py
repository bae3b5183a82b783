"""The SQLite database file: how it is opened (WAL), its schema and its migrations,
and SQLite's errors said as the store's.

Migrations run when a store opens (`SQLiteStore.open`) and by `havedane db upgrade`.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from havedane.store.base import SchemaTooNew, StoreError, StoreFull

SCHEMA_VERSION = 3

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


def is_full(e: sqlite3.Error) -> bool:
    return bool(getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL)


def store_error(e: sqlite3.Error) -> StoreError:
    """SQLite's error as the store's: a full disk (SQLITE_FULL) is said as such, not as "busy"."""
    if is_full(e):
        return StoreFull(f"the disk is full: {e}")
    return StoreError(f"database write failed: {e}")


def connect(path: Path, busy_timeout: float = 10.0) -> sqlite3.Connection:
    _create_private(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")  # first: WAL setup may wait for a lock
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _create_private(path: Path) -> None:
    """Create a missing database file readable by its owner only (0600, whatever the umask):
    it holds senders' addresses and IPs. SQLite gives the -wal and -shm files the mode of the
    database file (its unix VFS, robust_open/findCreateFileMode), so they follow."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # an existing database keeps the mode its operator gave it
    except OSError:
        pass  # no folder, no permission: sqlite3.connect reports it as the store's error, as before


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
        raise store_error(e) if is_full(e) else StoreError(f"cannot open {path}: {e}") from e
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

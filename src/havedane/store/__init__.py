"""The store: what havedane keeps, behind one face.

Callers import from here: `open_store(url)` and `upgrade(url)`, the `Store` contract
and its errors. The backends (`sqlite`, `postgres`) stand beside each other and never
import one another; the URL scheme is read only by `parse_url`, which configuration
validation uses as well. The store raises only these errors, never a driver's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

from havedane.store.base import Changes, DriverMissing, SchemaTooNew, Store, StoreError, StoreFull, TooManyTests

__all__ = [
    "Changes",
    "DriverMissing",
    "Location",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreFull",
    "TooManyTests",
    "open_store",
    "parse_url",
    "upgrade",
]

SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class Location:
    """Where a store URL points: a SQLite file, or a PostgreSQL database (its URL is the conninfo)."""

    kind: Literal["sqlite", "postgresql"]
    url: str
    path: Path | None = None  # of the SQLite file


def parse_url(url: str) -> Location:
    """`sqlite:///path` (relative paths are relative to the working directory here; the
    configuration makes them relative to its own directory) or `postgresql://…`."""
    if url.startswith(SQLITE):
        return Location("sqlite", url, Path(url.removeprefix(SQLITE)))
    if url.startswith(POSTGRES):
        return Location("postgresql", url)
    raise StoreError(f"must start with {SQLITE} or {POSTGRES[0]}, got {url!r}")


def open_store(url: str, busy_timeout: float = 10.0, write_timeout: float = 30.0) -> Store:
    """A store for `url`, not opened yet (`await store.open()`)."""
    where = parse_url(url)
    if where.path is not None:
        from havedane.store.sqlite import SQLiteStore

        return SQLiteStore(where.path, busy_timeout, write_timeout)
    postgres: Store = _postgres().PostgresStore(url, write_timeout=write_timeout)
    return postgres


def upgrade(url: str, busy_timeout: float = 10.0) -> tuple[int, int]:
    """Apply pending schema migrations; returns (from, to). Raises SchemaTooNew for a
    database migrated by a newer havedane, StoreError when it cannot be reached."""
    where = parse_url(url)
    if where.path is not None:
        from havedane.store import sqlite

        return sqlite.upgrade(where.path, busy_timeout)
    versions: tuple[int, int] = _postgres().upgrade(url)
    return versions


def _postgres() -> ModuleType:
    """The PostgreSQL backend, imported only when a URL names it: psycopg is the `postgres`
    extra, and a plain `pip install havedane` (SQLite) does not have it."""
    try:
        from havedane.store import postgres
    except ImportError as e:  # ModuleNotFoundError, or psycopg's own "no pq wrapper available"
        raise DriverMissing(
            f"a postgresql:// store needs the PostgreSQL driver ({e}): install havedane's postgres extra, "
            "pip install 'havedane[postgres]' (from a checkout: pip install '.[postgres]')"
        ) from None
    return postgres

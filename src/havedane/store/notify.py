"""Change feeds across processes: what other processes wrote wakes this process's live pages.

`Changes` (store/base.py) fans out within one process. Several processes share a
database when receivers and web frontends run apart (`havedane serve --role`):

- PostgreSQL: every write NOTIFYs the channel `havedane` with the alias it touched
  (`client:<ip>` for a session without alias: it concerns the tests that address
  delivered to) in the same transaction, so the notification is
  delivered only once the rows are committed and readable. `listen` holds ONE
  connection per process on that channel and feeds `Changes`, from which every live
  page (SSE) of the process and the web app's response cache hear of changes. It runs
  from open() in every process, receivers too: an idle connection is cheaper than a
  second way of knowing which processes need it.
- SQLite (one host): the writer thread polls `PRAGMA data_version` (store/sqlite_writer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import psycopg
import psycopg.conninfo
from psycopg import sql

from havedane.store.base import Changes

log = logging.getLogger("havedane.store")

CHANNEL = "havedane"
EVERYONE = "*"  # payload of a change that may concern any test

# A dead peer (host gone, NAT state dropped) shows up within about a minute.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def with_keepalive(conninfo: str) -> str:
    """`conninfo` with TCP keepalives, unless it sets its own."""
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    for key, value in KEEPALIVE.items():
        info.setdefault(key, value)
    return psycopg.conninfo.make_conninfo("", **info)


def first_line(error: BaseException) -> str:
    """libpq's messages span lines (DETAIL, HINT): logs and the CLI want one."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def payload_aliases(payload: str) -> set[str] | None:
    """The aliases a notification names: None means every test."""
    return None if payload == EVERYONE else {payload}


class Feed(Changes):
    """`Changes` also fed by other processes through `watch`, one task per process.
    A watcher calls `notify(None)` whenever it (re)connects: changes made while it was
    not watching are then re-read by every live page."""

    def __init__(self, watch: Callable[[Changes], Awaitable[None]]) -> None:
        super().__init__()
        self._watch = watch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._watch(self)
        except Exception:  # a bug, not an outage (`listen` retries those): pages fall back to their timeout
            log.exception("change feed stopped")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def listen(conninfo: str, changes: Changes, channel: str = CHANNEL, check_every: float = 30.0) -> None:
    """LISTEN on `channel` forever, feeding `changes`; reconnects with backoff."""
    delay = 0.5
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=10)
            async with conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                if delay > 0.5:
                    log.info("LISTEN %s: connected again", channel)
                delay = 0.5
                changes.notify(None)  # whatever was written while nobody listened
                while True:
                    async for note in conn.notifies(timeout=check_every):
                        changes.notify(payload_aliases(note.payload))
                    await conn.execute("SELECT 1")  # a silent, dead server is noticed here
        except psycopg.Error as e:
            log.warning("LISTEN %s: %s; reconnecting in %.1f s", channel, first_line(e), delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)

"""The SQLite store's one writer thread, with group commit.

Every write of a process goes through this thread, which commits whatever is queued
in one transaction: each caller's coroutine returns only after the COMMIT that holds
its rows, so a `250` sent after `await add_deliveries()` is never for a delivery that
is not on disk (WAL + synchronous=NORMAL survives a process crash; FULL would be
needed only against power loss of the host).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from havedane.store.base import StoreError
from havedane.store.sqlite_schema import store_error

OTHERS_POLL = 0.1  # seconds between checks for commits by other processes (PRAGMA data_version)
BATCH = 512  # jobs committed in one transaction at most

Job = Callable[[sqlite3.Connection], Any]
Item = tuple[Job, asyncio.Future[Any], set[str] | None]
Result = tuple[asyncio.Future[Any], Any, BaseException | None]
# What a commit changed: the aliases, or None for "anything" (every live page looks again).
Notify = Callable[[set[str] | None], None]
log = logging.getLogger("havedane.store")


class Writer(threading.Thread):
    """Owns `conn` (closed when the thread ends). Jobs run on it in the thread; their
    results are settled on `loop`, and `notify` is called there with what changed."""

    def __init__(
        self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, notify: Notify, write_timeout: float
    ) -> None:
        super().__init__(name="sqlite-writer", daemon=True)
        self.conn = conn
        self.loop = loop
        self.notify = notify
        self.write_timeout = write_timeout
        self.jobs: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self.died: str | None = None  # why the thread stopped, if it did

    async def write(self, job: Job, aliases: set[str] | None) -> Any:
        """`job(conn)` committed; its result. `aliases` are the tests it changes (None: any)."""
        if self.died is not None or not self.is_alive():
            raise StoreError(f"the database writer stopped ({self.died}): restart havedane")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self.jobs.put((job, fut, aliases))
        # (A timer on the future itself: asyncio.wait_for costs a task's worth of futures and
        # callbacks per write, on the loop that serves SMTP.)
        timer = loop.call_later(self.write_timeout, self._expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def stop(self) -> None:
        """The thread ends after the jobs queued before this (`join` to wait for it)."""
        self.jobs.put(None)

    def _expire(self, fut: asyncio.Future[Any]) -> None:
        """A frozen disk or a lock held elsewhere. The job may still commit later (`_settle`
        skips a settled future): the caller answers "try again" (451/503), so at worst a sender
        delivers twice."""
        if not fut.done():
            fut.set_exception(
                StoreError(f"database write did not finish within {self.write_timeout:g} s ([store] write_timeout)")
            )

    def run(self) -> None:
        batch: list[Item] = []
        try:
            seen = self._others_wrote(None)
            checked = time.monotonic()
            while True:
                batch = []
                try:
                    first = self.jobs.get(timeout=OTHERS_POLL)
                except queue.Empty:
                    seen = self._others_wrote(seen)
                    checked = time.monotonic()
                    continue
                if first is None:
                    return
                batch = [first]
                self._more(batch)
                self._commit(batch)
                if time.monotonic() - checked >= OTHERS_POLL:  # under load too, not after every commit
                    seen = self._others_wrote(seen)
                    checked = time.monotonic()
        except BaseException as e:
            # Whatever killed the writer, no caller may wait for it forever: fail what it
            # held and what is queued, and every later write at once (`write`).
            self.died = f"{type(e).__name__}: {e}"
            log.error("the database writer stopped (%s): every write fails until havedane restarts", self.died)
            self._fail_pending(batch)
        finally:
            self.conn.close()

    def _more(self, batch: list[Item]) -> None:
        """Adds to `batch` what else is queued, up to BATCH jobs; a stop stays queued for `run`."""
        while len(batch) < BATCH:
            try:
                item = self.jobs.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.jobs.put(None)
                break
            batch.append(item)

    def _fail_pending(self, batch: list[Item]) -> None:
        items: list[Any] = list(batch)
        while True:
            try:
                items.append(self.jobs.get_nowait())
            except queue.Empty:
                break
        error = StoreError(f"the database writer stopped ({self.died})")
        failed: list[Result] = [(item[1], None, error) for item in items if isinstance(item, tuple) and len(item) == 3]
        if failed:
            self.loop.call_soon_threadsafe(self._settle, failed, set())

    def _others_wrote(self, seen: int | None) -> int | None:
        """Wake every live page when another process committed. `data_version` of the
        writer's own connection changes only for commits by other connections, and in
        this process no other connection writes: its own writes (already notified by
        alias) do not count, so one process alone never pays for this."""
        try:
            version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return seen
        if seen is not None and version != seen:
            self.loop.call_soon_threadsafe(self.notify, None)
        return version

    def _commit(self, batch: list[Item]) -> None:
        conn = self.conn
        results: list[Result] = []
        changed: set[str] | None = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            done = self._run(batch, savepoints=False)
            if done is None:
                # A job failed: the batch again, a savepoint per job, so that it fails alone and
                # the others still commit. (Without a failure the savepoints were half the
                # writer's statements: the first pass goes without them.)
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                done = self._run(batch, savepoints=True)
            assert done is not None
            results, changed = done
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = store_error(e)
            results = [(fut, None, error) for _, fut, _ in batch]
            changed = set()
        self.loop.call_soon_threadsafe(self._settle, results, changed)

    def _run(self, batch: list[Item], savepoints: bool) -> tuple[list[Result], set[str] | None] | None:
        """Each job of the batch in the open transaction: (results, aliases changed), or None when
        a job failed and `savepoints` is off (the caller rolls back and runs them with savepoints)."""
        conn = self.conn
        results: list[Result] = []
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

    def _settle(self, results: list[Result], changed: set[str] | None) -> None:
        for fut, result, error in results:
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)
        if changed is None or changed:
            self.notify(changed)

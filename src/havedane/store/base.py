"""The interface both store implementations (SQLite, PostgreSQL) offer.

What it keeps are the values of `havedane.model`.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Iterable

from havedane.dns.queries import DnsQuery
from havedane.model import Delivery, Sent, Session, Test

# The EHLO name of `havedane check`'s own connections: they are never a sender's, so never
# tied to a test by client address (the check may run from the sender's host).
CHECK_HELO = "havedane-check.invalid"


KINDS_SHOWN = 4  # per probe: first deliveries of distinct kinds kept by a bounded read
SESSIONS_WITHOUT_MAIL = 20  # oldest sessions without MAIL kept by a bounded read

RECLAIM_BATCH = 1000  # tests reclaimed by one creation, so that it never holds the writer for long

# Tests that never received anything: the candidates for reclaiming ({mark}: `reclaim_before`).
UNUSED_TESTS = (
    "SELECT alias FROM tests WHERE created < {mark} AND NOT EXISTS"
    " (SELECT 1 FROM deliveries WHERE deliveries.alias = tests.alias) AND NOT EXISTS"
    " (SELECT 1 FROM sessions WHERE sessions.alias = tests.alias) ORDER BY created LIMIT {limit}"
)


class TestCache:
    """Found tests, kept in memory for a few seconds by both backends. A test never changes once
    created and goes only by prune, for being older than the retention period, which the
    receiver checks by itself: a cached test may outlive a prune in another process by
    `seconds`, harmlessly. Misses are not cached. It saves a read per RCPT after the first
    of a test (one MTA sends all its probes; docs/benchmarks.md, issue 13)."""

    __test__ = False  # not a pytest class

    def __init__(self, seconds: float = 10.0, entries: int = 10_000) -> None:
        self.seconds, self.entries = seconds, entries
        self._tests: dict[str, tuple[Test, float]] = {}

    def get(self, alias: str) -> Test | None:
        cached = self._tests.get(alias)
        return cached[0] if cached is not None and cached[1] > time.monotonic() else None

    def put(self, test: Test) -> Test:
        if len(self._tests) >= self.entries:
            self._tests.pop(next(iter(self._tests)))
        self._tests[test.alias] = (test, time.monotonic() + self.seconds)
        return test

    def clear(self) -> None:
        self._tests.clear()


class StoreError(Exception):
    """The store cannot do what was asked right now (busy, gone): retry later."""


class StoreFull(StoreError):
    """The disk (or the database's quota) is full: nothing more can be written until space is freed."""


class TooManyTests(StoreError):
    """The upper bound on stored tests is reached: refuse, never evict."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer havedane: this one refuses to touch it."""


class DriverMissing(StoreError):
    """The URL names a database whose driver is not installed (an extra): a setup error,
    not a passing one; the message says what to install."""


class Store(abc.ABC):
    """The store interface. Every write is durable (committed) when its coroutine returns."""

    def __init__(self) -> None:
        self.changes = Changes()

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def create_test(self, test: Test, max_tests: int | None = None, reclaim_before: float | None = None) -> None:
        """Insert a test; raises TooManyTests when `max_tests` are already stored. When full,
        tests created before `reclaim_before` that never received anything (no delivery,
        no session named them) go first, the oldest first, at most RECLAIM_BATCH at a
        time; a test that received mail is never evicted."""

    @abc.abstractmethod
    async def get_test(self, alias: str) -> Test | None: ...

    @abc.abstractmethod
    async def add_deliveries(self, deliveries: list[Delivery]) -> None: ...

    @abc.abstractmethod
    async def save_session(self, session: Session) -> None:
        """Insert or replace a session (it is saved again when it ends)."""

    @abc.abstractmethod
    async def deliveries_for(self, alias: str, per_probe: int | None = None) -> list[Delivery]:
        """The test's deliveries, oldest first. With `per_probe`, a bounded read: of each
        probe the newest `per_probe`, and the first of each kind (in plaintext, or over TLS
        with a given SNI; at most KINDS_SHOWN kinds), which the verdict rests on."""

    @abc.abstractmethod
    async def delivery_totals(self, alias: str) -> dict[str, int]:
        """How many deliveries each probe of the test received (probes with none absent)."""

    @abc.abstractmethod
    async def sessions_for(
        self, alias: str, client_ips: list[str], since: float, until: float | None = None, limit: int | None = None
    ) -> list[Session]:
        """Sessions that named the alias, and sessions without any alias (no MAIL) from one
        of `client_ips` that started between `since` and `until` (inclusive; None: no end),
        except those of `havedane check` (EHLO CHECK_HELO): the refusals correlated by
        client address. Oldest first. With `limit`, a bounded read: the newest `limit` of
        them, and the oldest SESSIONS_WITHOUT_MAIL that sent no MAIL (where refusals are)."""

    @abc.abstractmethod
    async def session_total(self, alias: str, client_ips: list[str], since: float, until: float | None = None) -> int:
        """How many sessions `sessions_for` would return without a limit."""

    @abc.abstractmethod
    async def tests_sent_from(self, client_ips: list[str], since: float, until: float) -> list[Sent]:
        """Every test with a delivery from one of `client_ips` received between `since` and
        `until` (inclusive), once per such address: the tests that may compete for a
        session tied by client address."""

    @abc.abstractmethod
    async def usage(self, alias: str) -> tuple[dict[str, int], int]:
        """({probe: deliveries stored}, sessions that named the alias): indexed counts, read
        once per test by the receiver to start its per-test limits from."""

    @abc.abstractmethod
    async def recent_tests_from(self, client_ip: str, since: float) -> int:
        """How many tests `client_ip` created since `since` (rate limiting)."""

    @abc.abstractmethod
    async def prune(self, older_than: float, orphan_sessions_older_than: float, max_orphans: int | None = None) -> int:
        """Remove tests (with their deliveries and sessions) created before `older_than`,
        sessions tied to no test that started before `orphan_sessions_older_than`, and
        beyond the newest `max_orphans` of those. Returns how many tests went."""

    # -- DNS queries (dnstap, schema version 3) --------------------------------

    @abc.abstractmethod
    async def add_dns_queries(self, queries: list[DnsQuery], per_test: int) -> int:
        """Store a batch in one transaction (group commit); returns how many were kept.
        A test's queries are kept while it exists and holds fewer than `per_test`;
        zone-level ones (alias None) always, bounded by `prune_dns`."""

    @abc.abstractmethod
    async def dns_queries_for(
        self, alias: str, resolvers: list[str], since: float, until: float | None = None, limit: int = 1000
    ) -> list[DnsQuery]:
        """The test's queries, and the zone-level queries from one of `resolvers` that
        arrived between `since` and `until` (inclusive; None: no end), oldest first; of
        the zone-level ones at most `limit` (the oldest)."""

    @abc.abstractmethod
    async def prune_dns(self, zone_older_than: float, max_zone: int) -> int:
        """Remove the queries of tests that are gone, zone-level queries older than
        `zone_older_than`, and beyond the newest `max_zone` of those. Returns how many went."""


def client_key(client_ip: str) -> str:
    """The change key of a client address: a session tied to no test changes the tests
    that address delivered to (they show it, correlated by client address)."""
    return CLIENT_PREFIX + client_ip


CLIENT_PREFIX = "client:"  # never part of an alias (a-z0-9)


class Changes:
    """In-process fan-out of "something about these tests changed" to live pages.

    A change names keys: an alias, or `client_key(ip)` for a session tied to no test (it
    concerns the tests that address delivered to: their pages watch it). `notify(None)`
    wakes everyone (another process wrote, and what is not known). Listeners (the web
    app's response cache) hear every change at once; waiters (one per open SSE stream)
    are woken once per COALESCE seconds at most: a page re-reads the whole state for a
    wake-up, so a burst of changes costs it one read.
    """

    COALESCE = 0.005

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.listeners: list[Callable[[set[str] | None], None]] = []  # e.g. the web app's response cache
        self.woken = 0  # waiters woken so far
        self._pending: set[str] | None = set()
        self._flush: asyncio.TimerHandle | None = None

    def notify(self, keys: set[str] | None) -> None:
        for listener in self.listeners:
            listener(keys)
        if keys is None:
            self._pending = None
        elif self._pending is not None:
            self._pending |= keys & self._waiters.keys()
        if self._flush is None and (self._pending is None or self._pending):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop, so nobody waits
                self._pending = set()
                return
            self._flush = loop.call_later(self.COALESCE, self._wake)

    def _wake(self) -> None:
        self._flush = None
        keys = list(self._waiters) if self._pending is None else list(self._pending)
        self._pending = set()
        for key in keys:
            for fut in self._waiters.pop(key, set()):
                if not fut.done():
                    fut.set_result(None)
                    self.woken += 1

    async def wait(self, keys: str | Iterable[str], timeout: float) -> bool:
        """True when one of `keys` changed within `timeout` seconds."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._waiters.setdefault(key, set()).add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[key]

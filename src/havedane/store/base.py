"""What the store keeps, and the interface both implementations (SQLite, PostgreSQL) offer.

Times are seconds since the epoch (UTC) everywhere inside; the API renders them as
ISO 8601 with a Z, and the page in the visitor's own time zone.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from havedane.dns.queries import DnsQuery

# The EHLO name of `havedane check`'s own connections: they are never a sender's, so never
# tied to a test by client address (the check may run from the sender's host).
CHECK_HELO = "havedane-check.invalid"


class Outcome(enum.StrEnum):
    """How a connection ended."""

    OPEN = "open"  # still connected (or the process died before it ended)
    DELIVERED = "delivered"  # at least one message accepted
    TLS_THEN_LEFT = "tls-then-left"  # TLS completed, then QUIT/close/alert without MAIL: a refusal
    HANDSHAKE_FAILED = "handshake-failed"  # shown our certificate, the client aborted the handshake: a refusal
    # The handshake failed before our certificate was sent (no shared cipher, version or group;
    # no ClientHello) or in our own TLS stack: ours, and no evidence either way.
    TLS_FAILED_HERE = "tls-failed-here"
    LEFT = "left"  # no TLS, no delivery (e.g. EHLO then QUIT: TLS required but not offered)
    REJECTED = "rejected"  # tried to send, every recipient refused
    TIMEOUT = "timeout"
    REFUSED_BUSY = "refused-busy"  # turned away at connect: too many connections (421)
    SHUTDOWN = "server-shutdown"  # still open when the receiver stopped (421): proves nothing


@dataclass(frozen=True)
class Tls:
    version: str
    cipher: str
    sni: str | None


@dataclass(frozen=True)
class Test:
    __test__ = False  # a visitor's test, not a pytest class

    alias: str
    created: float
    client_ip: str | None = None


@dataclass
class Session:
    """One SMTP connection, as the receiver saw it."""

    id: str
    started: float
    client_ip: str
    client_port: int
    local_ip: str
    local_port: int
    ended: float | None = None
    helo: str | None = None
    starttls: bool = False  # the client asked for STARTTLS
    tls: Tls | None = None  # the handshake completed
    mail_from: str | None = None
    rcpts: list[str] = field(default_factory=list)
    probe: str | None = None
    alias: str | None = None
    outcome: Outcome = Outcome.OPEN
    error: str | None = None
    chain: str | None = None  # which certificate chain was served
    delivered: int = 0  # recipients recorded in this connection (not stored: deliveries are)


@dataclass(frozen=True)
class Delivery:
    """One accepted recipient of one message, committed before the 250."""

    alias: str
    probe: str
    received_at: float
    client_ip: str
    helo: str | None
    mail_from: str
    rcpt: str
    tls: Tls | None
    session_id: str | None = None
    size: int = 0
    message_id: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class Sent:
    """A test that received mail from `client_ip`; `first` is its first delivery from anyone."""

    alias: str
    client_ip: str
    created: float
    first: float


KINDS_SHOWN = 4  # per probe: first deliveries of distinct kinds kept by a bounded read
SESSIONS_WITHOUT_MAIL = 20  # oldest sessions without MAIL kept by a bounded read


class StoreError(Exception):
    """The store cannot do what was asked right now (busy, gone): retry later."""


class StoreFull(StoreError):
    """The disk (or the database's quota) is full: nothing more can be written until space is freed."""


class TooManyTests(StoreError):
    """The upper bound on stored tests is reached: refuse, never evict."""


class Store(abc.ABC):
    """The store interface. Every write is durable (committed) when its coroutine returns."""

    def __init__(self) -> None:
        self.changes = Changes()

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def create_test(self, test: Test, max_tests: int | None = None) -> None:
        """Insert a test; raises TooManyTests when `max_tests` are already stored."""

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


class Changes:
    """In-process fan-out of "something about these tests changed" to live pages.

    One waiter per open SSE stream; `notify(None)` wakes everyone (used for sessions
    that carry no alias: they may belong to any test by client address).
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.listeners: list[Callable[[set[str] | None], None]] = []  # e.g. the web app's response cache

    def notify(self, aliases: set[str] | None) -> None:
        for listener in self.listeners:
            listener(aliases)
        keys = list(self._waiters) if aliases is None else [a for a in aliases if a in self._waiters]
        for key in keys:
            for fut in self._waiters.pop(key, set()):
                if not fut.done():
                    fut.set_result(None)

    async def wait(self, alias: str, timeout: float) -> bool:
        """True when `alias` changed within `timeout` seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(alias, set()).add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(alias)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[alias]

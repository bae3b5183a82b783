"""The web app's response cache: a test's JSON and its page, built once, served until it changes.

A reload costs a dictionary look-up instead of a report (store reads, judging) and a
rendering (issue 12, 1: three visitors reloading a flooded test's page rebuilt it for every
request and held everyone else's SMTP greeting for hundreds of milliseconds). An entry
lives until a change notice names one of its keys (`Changes`: the test's alias, or the
client key of an address that delivered to it; `None`: everything), until the grace
period ends (the verdict moves with time), and at most CACHE_SECONDS should a notice ever
be missed.

Concurrent reads of an entry that is missing share one build; a build that read the test
before a change it depends on is served to those who asked before the change, and never
stored nor served to those who asked after it (they build again).
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

CACHE_SECONDS = 1.0
CACHE_ENTRIES = 10_000
CACHE_BYTES = 64 * 2**20  # a heavy page is ~70 kB, a heavy JSON < 200 kB: bounded in bytes as well
CHANGE_LOG = 4096  # change notices remembered to judge a build; a build older than them is not stored


@dataclass(frozen=True)
class Built:
    """What a build made: the body, when it expires, and the change keys it depends on."""

    body: bytes
    expires: float
    keys: frozenset[str]


@dataclass(frozen=True)
class Entry:
    body: bytes
    expires: float
    keys: frozenset[str]
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Landed:
    entry: Entry | None  # None: no such test
    seq: int  # the change counter when the build started


Key = tuple[str, str]  # (kind: "json", "test.html", ...; alias)


class ResponseCache:
    def __init__(
        self,
        now: Callable[[], float],
        headers: Callable[[str, bytes], list[tuple[bytes, bytes]]],
        max_entries: int = CACHE_ENTRIES,
        max_bytes: int = CACHE_BYTES,
    ) -> None:
        self.now = now
        self.headers = headers  # (kind, body) -> the response headers kept with the entry
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries: collections.OrderedDict[Key, Entry] = collections.OrderedDict()
        self.bytes = 0
        self._watching: dict[str, set[Key]] = {}  # change key -> entries that depend on it
        self._seq = 0
        self._log: collections.deque[tuple[int, frozenset[str] | None]] = collections.deque(maxlen=CHANGE_LOG)
        self._flights: dict[Key, asyncio.Task[Landed]] = {}

    def fresh(self, kind: str, alias: str) -> Entry | None:
        key = (kind, alias)
        entry = self.entries.get(key)
        if entry is None:
            return None
        if self.now() >= entry.expires:
            self._drop(key)
            return None
        return entry

    def invalidate(self, keys: set[str] | None) -> None:
        """A change notice (a `Changes` listener): drop what depends on `keys`."""
        self._seq += 1
        self._log.append((self._seq, None if keys is None else frozenset(keys)))
        if keys is None:
            self.entries.clear()
            self._watching.clear()
            self.bytes = 0
            return
        for key in keys:
            for entry_key in list(self._watching.get(key, ())):
                self._drop(entry_key)

    async def read(self, kind: str, alias: str, build: Callable[[], Awaitable[Built | None]]) -> Entry | None:
        """The entry, from the cache or built (once for all who ask at the same time)."""
        arrived = self._seq
        while True:
            entry = self.fresh(kind, alias)
            if entry is not None:
                return entry
            key = (kind, alias)
            flight = self._flights.get(key)
            if flight is None or flight.done():
                flight = asyncio.create_task(self._build(key, build))
                self._flights[key] = flight
                flight.add_done_callback(functools.partial(self._landed, key))
            landed = await asyncio.shield(flight)
            if landed.entry is None or not self._changed(landed.seq, arrived, landed.entry.keys):
                return landed.entry
            # That build read the test before a change this reader came after: build anew.
            # (Its next build starts after `arrived`, so this loops at most once more.)

    async def _build(self, key: Key, build: Callable[[], Awaitable[Built | None]]) -> Landed:
        seq = self._seq
        built = await build()
        if built is None:
            return Landed(None, seq)
        entry = Entry(built.body, built.expires, built.keys, self.headers(key[0], built.body))
        if not self._changed(seq, self._seq, entry.keys):
            self._store(key, entry)
        return Landed(entry, seq)

    def _landed(self, key: Key, flight: asyncio.Task[Landed]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # raised to every reader still waiting; retrieved, should none be left

    def _changed(self, since: int, until: int, keys: frozenset[str]) -> bool:
        """Did a change notice numbered in (since, until] name one of `keys`?"""
        if until <= since:
            return False
        if not self._log or self._log[0][0] > since + 1:
            return True  # older than the log remembers: assume so
        for seq, changed in reversed(self._log):
            if seq <= since:
                break
            if seq <= until and (changed is None or not changed.isdisjoint(keys)):
                return True
        return False

    def _store(self, key: Key, entry: Entry) -> None:
        self._drop(key)
        self.entries[key] = entry
        self.bytes += len(entry.body)
        for change_key in entry.keys:
            self._watching.setdefault(change_key, set()).add(key)
        while self.entries and (len(self.entries) > self.max_entries or self.bytes > self.max_bytes):
            self._drop(next(iter(self.entries)))  # the oldest stored first

    def _drop(self, key: Key) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        self.bytes -= len(entry.body)
        for change_key in entry.keys:
            watchers = self._watching.get(change_key)
            if watchers is not None:
                watchers.discard(key)
                if not watchers:
                    del self._watching[change_key]

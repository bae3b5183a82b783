"""How much each test has taken in: the receiver's per-test limits, counted in memory.

`[smtp] max_deliveries_per_probe` and `max_sessions_per_test` bound what one test can
hold, so that its report stays small whatever a sender does. The counts start from the
store (one indexed count per test, `Store.usage`, when the test is first named since
the process started) and then move in memory: a check at RCPT costs no query, however
many deliveries a test holds.

Sessions are counted when they first name the test (at RCPT), so connections still in
progress count too. Deliveries are counted when committed: connections that passed the
check at RCPT at the same time can each add one beyond the limit (at most one per
concurrent connection), as can other receiver processes sharing the store. An
acknowledged delivery is never dropped to keep a limit.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from havedane.store import Store

ENTRIES = 10_000  # tests whose counts are kept; the least recently named are read again when needed


@dataclass
class Usage:
    deliveries: dict[str, int] = field(default_factory=dict)  # probe -> deliveries stored
    sessions: int = 0  # sessions that named the test


class Quota:
    def __init__(self, store: Store, entries: int = ENTRIES) -> None:
        self.store = store
        self.entries = entries
        self._usage: collections.OrderedDict[str, Usage] = collections.OrderedDict()

    async def usage(self, alias: str) -> Usage:
        """The counts for `alias` (raises StoreError when they must be read and cannot)."""
        usage = self._usage.get(alias)
        if usage is None:
            deliveries, sessions = await self.store.usage(alias)
            usage = self._usage.get(alias)  # another connection may have read it meanwhile
            if usage is None:
                usage = self._usage[alias] = Usage(deliveries, sessions)
                while len(self._usage) > self.entries:
                    self._usage.popitem(last=False)
        self._usage.move_to_end(alias)
        return usage

    def delivered(self, alias: str, probe: str) -> None:
        """One delivery to `probe` of `alias` was committed (if the test's counts are not in
        memory, the store has it and the next read finds it there)."""
        usage = self._usage.get(alias)
        if usage is not None:
            usage.deliveries[probe] = usage.deliveries.get(probe, 0) + 1

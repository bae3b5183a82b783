"""Live pages (SSE): one `update` event per change of a test's state, bounded per client and in total.

Each stream holds a socket for as long as its page is open, so the streams are counted per
client group and in total; beyond either cap the page polls the JSON API instead
(static/test.js). A stream wakes on a change notice for the keys its test depends on
(store.changes), or when the grace period ends, and otherwise sends a comment every
KEEPALIVE seconds (proxies drop idle connections).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from havedane import report
from havedane.config import Config
from havedane.metrics import Metrics
from havedane.store import Store
from havedane.store.base import client_key
from havedane.web.errors import json_error

KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream (proxies drop idle connections)


def state_id(body: dict[str, Any]) -> tuple[str, str]:
    """The JSON text of a test's state and its digest: the SSE event id, also written into the
    page, so a page that already shows a state does not fetch it again."""
    payload = json.dumps(body, separators=(",", ":"))
    return payload, hashlib.sha256(payload.encode()).hexdigest()[:16]


def senders(rep: report.Report) -> set[str]:
    """The client addresses that delivered to the test: sessions tied to no test from them
    show on its page (correlated by client address), so its live page watches them."""
    return {d.client_ip for r in rep.verdict.probes.values() for d in r.deliveries}


def watched(alias: str, rep: report.Report) -> set[str]:
    """The change keys a test's state depends on: its alias and the client key of each sender."""
    return {alias} | {client_key(ip) for ip in senders(rep)}


class EventStream(StreamingResponse):
    """An SSE response that gives its slot back when it ends, however it ends."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class Streams:
    """The open live pages of this process, and the stream each of them reads."""

    def __init__(
        self, config: Config, store: Store, load: Callable[[str], Awaitable[report.Report | None]], metrics: Metrics
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.load = load  # alias -> the test's report (None: no such test)
        self._per_client: dict[str, int] = {}
        self._total = 0

    @property
    def total(self) -> int:
        """Live pages open now (all clients)."""
        return self._total

    def open(self, who: str, alias: str, last_id: str | None) -> Response:
        """A stream for `who` (a client group), or the error that tells the page to poll."""
        if self._total >= self.config.max_streams:
            return self.metrics.refused("max_streams", json_error(
                503, "too many live pages (event streams) are open; this page will poll", {"Retry-After": "60"}
            ))  # fmt: skip
        if self._per_client.get(who, 0) >= self.config.max_streams_per_client:
            return self.metrics.refused("max_streams_per_client", json_error(
                429, "too many live pages (event streams) open from your address; this page will poll",
                {"Retry-After": "60"},
            ))  # fmt: skip
        self._per_client[who] = self._per_client.get(who, 0) + 1
        self._total += 1

        def release() -> None:
            self._total -= 1
            self._per_client[who] -= 1
            if not self._per_client[who]:
                del self._per_client[who]

        return EventStream(self._stream(alias, last_id), release)

    async def _stream(self, alias: str, last_id: str | None) -> AsyncIterator[str]:
        """One `update` event per change of the test's state; the id is a digest of the
        state, so a reconnecting client (Last-Event-ID) gets only what it has not seen.
        Only the latest state is ever pending: a state is built when the previous one has
        been handed to the socket, and a reader that stalls is dropped by the kernel
        (TCP_USER_TIMEOUT, set in serve_forever)."""
        yield "retry: 2000\n\n"
        keys = {alias}
        changed = await self._watch(keys)
        try:
            while True:
                rep = await self.load(alias)
                if rep is None:
                    yield "event: gone\ndata: {}\n\n"
                    return
                wanted = watched(alias, rep)
                if not wanted <= keys:
                    # A new sender: watch its address too, from before a read that shows it.
                    changed.cancel()
                    keys = wanted
                    changed = await self._watch(keys)
                    continue
                payload, event_id = state_id(report.to_json(self.config, rep))
                if event_id != last_id:
                    yield f"id: {event_id}\nevent: update\ndata: {payload}\n\n"
                    last_id = event_id
                # Wake on a change, or when the grace period ends (the verdict moves with time).
                timeout = KEEPALIVE
                grace_ends = rep.verdict.grace_ends
                if grace_ends is not None and grace_ends > rep.now:
                    timeout = min(timeout, grace_ends - rep.now + 0.05)
                done, _ = await asyncio.wait({changed}, timeout=timeout)
                if done:
                    changed = await self._watch(keys)
                else:
                    yield ": keep-alive\n\n"
        finally:
            changed.cancel()

    async def _watch(self, keys: set[str]) -> asyncio.Task[bool]:
        """A waiter for the next change of `keys`, registered before the caller reads the
        state: a change that lands between the read and the wait is not lost."""
        task = asyncio.create_task(self.store.changes.wait(keys, 3600))
        await asyncio.sleep(0)  # let the task run up to its wait: it is registered from here on
        return task

"""A test's page is cached like its JSON (issue 12, 1): reloading it costs no report.

Three visitors reloading a flooded test's page rebuilt it for every request (store reads,
judging, rendering), and the bystander's SMTP greeting waited for them. The web app
(httpx's ASGI transport) runs on a real SQLite store, instrumented to count (and, for the
race, to pause) the reads a report makes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from havedane import config as configmod
from havedane.model import Delivery, Outcome, Session, Test, Tls
from havedane.store.sqlite import SQLiteStore
from havedane.web.app import create_app
from helpers import make_setup

pytestmark = pytest.mark.anyio

ALIAS = "cachedpage000000"
SENDER = "192.0.2.7"
TLS = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", "do.x.test")
WAIT = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingStore(SQLiteStore):
    """The real SQLite store, counting the reports read from it (a report reads the
    deliveries once); with `hold` set, a report waits there once it has read them."""

    reads = 0
    hold: asyncio.Event | None = None
    held = asyncio.Event()

    async def deliveries_for(self, alias: str, per_probe: int | None = None) -> list[Delivery]:
        rows = await super().deliveries_for(alias, per_probe)
        self.reads += 1
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        return rows


def delivery(n: int, probe: str = "do") -> Delivery:
    return Delivery(alias=ALIAS, probe=probe, received_at=time.time(), client_ip=SENDER, helo="mx.sender.example",
                    mail_from=f"marker-{n}@sender.example", rcpt=f"{ALIAS}@{probe}.x.test", tls=TLS,
                    session_id=f"s{n}", size=100, message_id=f"<{n}@sender.example>")  # fmt: skip


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[tuple[CountingStore, httpx.AsyncClient]]:
    config = configmod.load(make_setup(tmp_path / "setup"), env={})
    store = CountingStore(tmp_path / "cache.sqlite3")
    store.held = asyncio.Event()
    await store.open()
    await store.create_test(Test(ALIAS, time.time(), "198.51.100.1"))
    await store.add_deliveries([delivery(1)])
    app = create_app(config, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield store, client
    await store.close()


def response(r: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return r.status_code, sorted(r.headers.items()), r.content


@pytest.mark.parametrize("path", [f"/t/{ALIAS}", f"/t/{ALIAS}?fragment=1", f"/api/tests/{ALIAS}"])
async def test_a_cached_read_is_the_same_response_and_reads_nothing(
    web: tuple[CountingStore, httpx.AsyncClient], path: str
) -> None:
    store, client = web
    first = await client.get(path)
    reads = store.reads
    again = [await client.get(path) for _ in range(5)]
    assert store.reads == reads, f"{store.reads - reads} reports read for 5 reloads of {path}"
    assert all(response(r) == response(first) for r in again)
    status, headers, body = response(first)
    names = dict(headers)
    assert status == 200 and b"marker-1@sender.example" in body
    assert names["cache-control"] == "no-store" and names["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in names["content-security-policy"]


async def test_a_new_delivery_or_a_refusal_from_its_sender_invalidates_the_cached_page(
    web: tuple[CountingStore, httpx.AsyncClient],
) -> None:
    store, client = web
    before = (await client.get(f"/t/{ALIAS}")).text
    await store.add_deliveries([delivery(2, "dont")])
    after = (await client.get(f"/t/{ALIAS}")).text
    assert "marker-2@sender.example" not in before and "marker-2@sender.example" in after
    # A session tied to no test, from the address that delivered to it: shown with it.
    now = time.time()
    await store.save_session(
        Session(id="refusal", started=now, ended=now, client_ip=SENDER, client_port=40000, local_ip="127.0.0.1",
                local_port=25, helo="refusing.sender.example", outcome=Outcome.TLS_THEN_LEFT, probe="wrong",
                tls=Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", "wrong.x.test"))
    )  # fmt: skip
    last = (await client.get(f"/t/{ALIAS}")).text
    assert "refusing.sender.example" not in after and "refusing.sender.example" in last


async def test_concurrent_reads_of_a_missing_page_share_one_build(
    web: tuple[CountingStore, httpx.AsyncClient],
) -> None:
    store, client = web
    reads = store.reads
    pages = await asyncio.gather(*(client.get(f"/t/{ALIAS}") for _ in range(8)))
    assert store.reads - reads == 1
    assert len({r.content for r in pages}) == 1


@pytest.mark.parametrize("path", [f"/t/{ALIAS}", f"/api/tests/{ALIAS}"])
async def test_a_delivery_during_a_build_is_not_hidden_by_the_cache(
    web: tuple[CountingStore, httpx.AsyncClient], path: str
) -> None:
    """A read that began before a delivery may show the state before it; every read that
    begins after the delivery's 250 shows it (the build that read too early is not kept)."""
    store, client = web
    store.hold = asyncio.Event()
    early = asyncio.create_task(client.get(path))
    await asyncio.wait_for(store.held.wait(), WAIT)  # the report has read the deliveries
    await store.add_deliveries([delivery(3, "dont")])  # the receiver's 250 goes out after this
    store.hold.set()
    store.hold = None
    assert (await early).status_code == 200
    assert b"marker-3@sender.example" in (await client.get(path)).content

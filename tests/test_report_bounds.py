"""A test that grew without bound (issue 12 item 1, the reading half): its report reads a
bounded number of rows plus counts, says "showing N of M", and building it never holds
the event loop that also serves SMTP.

20,000 deliveries stored directly through a real SQLite store, the web app driven in the
same event loop (httpx's ASGI transport), a ticker measuring the loop's longest gap.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from havedane import config as configmod
from havedane import report
from havedane.model import Delivery, Test, Tls
from havedane.store import Store
from havedane.store.base import KINDS_SHOWN, SESSIONS_WITHOUT_MAIL
from havedane.store.sqlite import SQLiteStore
from havedane.web.app import create_app
from helpers import make_setup

pytestmark = pytest.mark.anyio

FLOOD = 20_000
T0 = 1_700_000_000.0
TLS = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", "do.x.test")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def delivery(alias: str, n: int, probe: str = "do", tls: Tls | None = TLS) -> Delivery:
    return Delivery(alias=alias, probe=probe, received_at=T0 + 1 + n / 1000, client_ip="192.0.2.1",
                    helo="mx.sender.example", mail_from="postmaster@sender.example", rcpt=f"{alias}@{probe}.x.test",
                    tls=tls, session_id=f"s{n}", size=100, message_id=f"<{n}@sender.example>")  # fmt: skip


@pytest.fixture
async def flooded(tmp_path: Path) -> AsyncIterator[tuple[configmod.Config, Store]]:
    """A test whose `do` probe got FLOOD deliveries (one of them, early on, in plaintext),
    with FLOOD sessions, and one delivery to `dont`."""
    config = configmod.load(make_setup(tmp_path / "setup"), env={})
    store = SQLiteStore(tmp_path / "flood.sqlite3")
    await store.open()
    await store.create_test(Test("flood", T0, "198.51.100.1"))
    for start in range(0, FLOOD, 1000):
        await store.add_deliveries(
            [delivery("flood", n, tls=None if n == 10 else TLS) for n in range(start, start + 1000)]
        )
    await store.add_deliveries([delivery("flood", FLOOD, probe="dont")])
    await store._write(
        lambda conn: conn.executemany(
            "INSERT INTO sessions (id, started, client_ip, client_port, local_ip, local_port, starttls, rcpts,"
            " probe, alias, outcome) VALUES (?, ?, '192.0.2.1', 40000, '127.0.0.1', 25, 0, '[]', 'do', 'flood',"
            " 'delivered')",
            [(f"bulk{n}", T0 + 1 + n / 1000) for n in range(FLOOD)],
        ),
        set(),
    )
    yield config, store
    await store.close()


async def test_the_report_of_a_flooded_test_is_small_and_says_how_much_it_shows(
    flooded: tuple[configmod.Config, Store],
) -> None:
    config, store = flooded
    app = create_app(config, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as web:
        resp = await web.get("/api/tests/flood")
        page = await web.get("/t/flood")
    assert resp.status_code == 200 and page.status_code == 200
    assert len(resp.content) < 200_000, f"{len(resp.content)} bytes"
    body = resp.json()
    do = body["probes"]["do"]
    assert do["deliveries_total"] == FLOOD
    assert len(do["deliveries"]) <= report.DELIVERIES_SHOWN + KINDS_SHOWN
    # The newest are shown, and the first (it decides when the grace period ends) ...
    received = [d["received_at"] for d in do["deliveries"]]
    assert received[0] == report.iso(T0 + 1) and received[-1] == report.iso(T0 + 1 + (FLOOD - 1) / 1000)
    # ... and the one in plaintext among them still fails the probe that requires TLS.
    assert any(d["tls"] is None for d in do["deliveries"])
    assert body["verdict"]["code"] == "no-tls"
    assert body["probes"]["dont"]["deliveries_total"] == 1
    assert body["sessions_total"] == FLOOD
    assert body["sessions_shown"] <= report.SESSIONS_SHOWN + SESSIONS_WITHOUT_MAIL
    assert f"{FLOOD:,}" in page.text and "showing" in page.text.lower()
    assert len(page.content) < 1_000_000


async def test_building_a_flooded_report_never_holds_the_event_loop(
    flooded: tuple[configmod.Config, Store],
) -> None:
    config, store = flooded
    app = create_app(config, store)
    gaps: list[float] = []
    done = asyncio.Event()

    # What the loop's own thread computed between two ticks (its CPU time, not the wall
    # clock): work done on the loop holds it, work handed to other threads does not, and a
    # loaded machine that merely schedules the thread late does not count as holding it.
    async def ticker() -> None:
        last = time.thread_time()
        while not done.is_set():
            await asyncio.sleep(0.002)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    # pytest's own heap (every module it imported) makes a full garbage collection take up
    # to ~100 ms here, whoever triggers it: frozen, the ticker measures the report alone.
    gc.collect()
    gc.freeze()
    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as web:
        for n in range(3):
            # Each a fresh build: a new delivery clears the cached JSON.
            await store.add_deliveries([delivery("flood", FLOOD + 1 + n)])
            assert (await web.get("/api/tests/flood")).status_code == 200
            assert (await web.get("/t/flood")).status_code == 200
    done.set()
    await tick
    gc.unfreeze()
    assert max(gaps) < 0.1, f"the event loop computed for {max(gaps) * 1000:.0f} ms without a break"

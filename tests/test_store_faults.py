"""Storage faults (issue 12 item 8): a write never hangs, a full disk says so, a large
prune does not hold up deliveries.

Real SQLite and a real PostgreSQL (marker `postgres`): the writer thread is killed for
real, a lock is held by another connection as a frozen writer would hold it, and the
disk fills up for real (SQLite's `max_page_count` on the writer's own connection).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest

from havedane import config as configmod
from havedane.config import Listen
from havedane.model import Delivery, Test
from havedane.receiver import Receiver
from havedane.store import Store, StoreError, StoreFull, open_store, upgrade
from havedane.store.postgres_schema import failure
from havedane.store.sqlite import SQLiteStore
from havedane.web.app import create_app
from helpers import free_port, make_setup
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
BOUND = 0.5  # the write timeout these tests configure


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def delivery(alias: str, n: int = 0) -> Delivery:
    return Delivery(alias=alias, probe="do", received_at=T0 + n, client_ip="192.0.2.1", helo="mx.sender.example",
                    mail_from="postmaster@sender.example", rcpt=f"t@{alias}.do.x.test", tls=None, size=10)  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'havedane.sqlite3'}"
    else:
        db = request.getfixturevalue("postgres_url")
    upgrade(db)
    return db


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url, write_timeout=BOUND)
    await s.open()
    yield s
    await s.close()


async def timed_write(store: Store, alias: str) -> tuple[BaseException | None, float]:
    """Try one delivery; what it raised and how long it took (never more than 10 s)."""
    start = time.monotonic()
    try:
        await asyncio.wait_for(store.add_deliveries([delivery(alias)]), 10)
    except BaseException as e:  # noqa: BLE001 - the test inspects it
        return e, time.monotonic() - start
    return None, time.monotonic() - start


async def test_writes_fail_fast_once_the_sqlite_writer_thread_died(tmp_path: Path) -> None:
    db = tmp_path / "havedane.sqlite3"
    store = SQLiteStore(db, write_timeout=5.0)
    await store.open()
    try:
        await store.create_test(Test("alive", T0))
        # A queue item the writer cannot unpack: the thread dies on it, for real.
        assert store._writer is not None
        store._writer.jobs.put("not a job")  # type: ignore[arg-type]
        await asyncio.to_thread(store._writer.join, 5)
        assert not store._writer.is_alive()
        error, took = await timed_write(store, "alive")
        assert isinstance(error, StoreError) and "writer" in str(error), error
        assert took < 1.0  # fails fast, not after the write timeout
    finally:
        await store.close()
    # Nothing was half-written: the database is intact for the next start.
    assert sqlite3.connect(db).execute("SELECT count(*) FROM tests").fetchone() == (1,)


async def test_a_write_blocked_elsewhere_gives_up_within_the_write_timeout(
    store: Store, url: str, tmp_path: Path
) -> None:
    """A frozen filesystem or a stuck peer holds the write lock: the write gives up after the
    configured bound with a StoreError (the receiver answers 451, the web 503)."""
    await store.create_test(Test("blocked", T0))
    if url.startswith("sqlite"):
        holder = sqlite3.connect(tmp_path / "havedane.sqlite3", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held as long as the test likes
        release = holder.close
    else:
        pg = psycopg.connect(url)
        pg.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")  # in an open transaction
        release = pg.close
    try:
        error, took = await timed_write(store, "blocked")
    finally:
        release()
    assert isinstance(error, StoreError), error
    assert took < BOUND + 1.5
    # Once the lock is gone, writes go through again.
    await asyncio.wait_for(store.add_deliveries([delivery("blocked", 1)]), 15)
    assert [d.received_at for d in await store.deliveries_for("blocked")][-1] == T0 + 1


async def fill_up(store: SQLiteStore) -> None:
    """Cap the writer's database at its current size: the next page it needs is a full disk."""

    def cap(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")

    await store._write(cap, set())


async def test_a_full_disk_is_reported_as_a_full_disk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = configmod.load(make_setup(tmp_path / "setup"), env={"HAVEDANE_LIMITS_TESTS_PER_MINUTE": "10000"})
    store = SQLiteStore(tmp_path / "full.sqlite3")
    await store.open()
    try:
        await fill_up(store)
        with pytest.raises(StoreFull):
            await store.add_deliveries([delivery(f"a{n:06d}", n) for n in range(2000)])
        app = create_app(config, store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as web:
            with caplog.at_level(logging.ERROR):
                for _ in range(200):  # until the tests table needs a page it cannot have
                    resp = await web.post("/api/tests")
                    if resp.status_code != 201:
                        break
        assert resp.status_code == 507
        assert "disk is full" in resp.json()["error"]
        assert "busy" not in resp.json()["error"]
        assert any("full" in r.getMessage() for r in caplog.records)
    finally:
        await store.close()


def test_postgres_disk_full_is_store_full() -> None:
    error = failure("postgresql://db.example/havedane", psycopg.errors.DiskFull("could not extend file"))
    assert isinstance(error, StoreFull)


async def test_the_web_says_503_and_logs_when_the_writer_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = configmod.load(make_setup(tmp_path / "setup"), env={})
    store = SQLiteStore(tmp_path / "gone.sqlite3", write_timeout=5.0)
    await store.open()
    try:
        assert store._writer is not None
        store._writer.jobs.put("not a job")  # type: ignore[arg-type]
        await asyncio.to_thread(store._writer.join, 5)
        app = create_app(config, store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as web:
            with caplog.at_level(logging.ERROR):
                resp = await asyncio.wait_for(web.post("/api/tests"), 5)
        assert resp.status_code == 503 and resp.headers["retry-after"]
        assert any("writer" in r.getMessage() for r in caplog.records)
    finally:
        await store.close()


async def test_the_receiver_says_451_and_logs_when_the_writer_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = configmod.load(make_setup(tmp_path / "setup"), env={})
    store = SQLiteStore(tmp_path / "gone.sqlite3", write_timeout=5.0)
    await store.open()
    receiver = Receiver(config, store, None)
    port = free_port()
    await receiver.start((Listen("127.0.0.1", port),))
    try:
        await store.create_test(Test("victim", time.time()))
        assert store._writer is not None
        store._writer.jobs.put("not a job")  # type: ignore[arg-type]
        await asyncio.to_thread(store._writer.join, 5)

        def send() -> tuple[int, float]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.ehlo("sender.example")
                smtp.mail("postmaster@sender.example")
                smtp.rcpt("test@victim.do.x.test")
                start = time.monotonic()
                code, _ = smtp.data(b"Subject: hi\r\n\r\nhello\r\n")
                return code, time.monotonic() - start

        with caplog.at_level(logging.ERROR):
            code, took = await asyncio.to_thread(send)
        assert code == 451 and took < 2.0
        assert any("not recorded" in r.getMessage() and "writer" in r.getMessage() for r in caplog.records)
    finally:
        await receiver.stop()
        await store.close()


ORPHANS = 300_000


async def test_a_large_prune_does_not_hold_up_a_delivery(tmp_path: Path) -> None:
    """Pruning hundreds of thousands of orphan sessions runs in batches: a delivery committed
    meanwhile is acknowledged quickly (loose bound), not after the whole prune."""
    db = tmp_path / "havedane.sqlite3"
    upgrade(f"sqlite:///{db}")
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("BEGIN")
    raw.executemany(
        "INSERT INTO sessions (id, started, client_ip, client_port, local_ip, local_port, starttls, rcpts, outcome)"
        " VALUES (?, ?, '192.0.2.9', 1, '127.0.0.1', 25, 0, '[]', 'left')",
        ((uuid.uuid4().hex, T0 + n / 1000) for n in range(ORPHANS)),
    )
    raw.execute("COMMIT")
    raw.close()
    store = SQLiteStore(db)
    await store.open()
    try:
        await store.create_test(Test("busy", T0 + 10**6))
        prune = asyncio.create_task(store.prune(T0, T0 + ORPHANS, max_orphans=None))
        latencies = []
        while not prune.done():
            start = time.monotonic()
            await store.add_deliveries([delivery("busy", len(latencies))])
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(0.01)
        await prune
    finally:
        await store.close()
    remaining = sqlite3.connect(db).execute("SELECT count(*) FROM sessions").fetchone()[0]
    assert remaining == 0
    print(f"{len(latencies)} deliveries during the prune, slowest {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 1.0, f"slowest delivery during the prune: {max(latencies):.2f} s"

"""The store contract: one suite, run against SQLite and a real PostgreSQL (marker `postgres`).

Both implementations must answer the same calls with the same values, commit before a
call returns, refuse rather than evict, and wake live pages in their own process and in
other processes sharing the database (a second store object on the same database
stands for another process).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest

from havedane import check, report, wording
from havedane import config as configmod
from havedane.dns.queries import DnsQuery
from havedane.model import Delivery, Outcome, Session, Test, Tls
from havedane.store import (
    SchemaTooNew,
    Store,
    StoreError,
    TooManyTests,
    open_store,
    postgres,
    postgres_schema,
    sqlite,
    sqlite_schema,
    upgrade,
)
from havedane.store.base import CHECK_HELO, client_key
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.123456  # a float with sub-millisecond digits: must come back exactly
VERSIONS = {"sqlite": sqlite.SCHEMA_VERSION, "postgres": postgres.SCHEMA_VERSION}
TLS = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", "do.x.test")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'havedane.sqlite3'}"
    else:
        db = request.getfixturevalue("postgres_url")
    assert upgrade(db) == (0, VERSIONS[request.param])
    return db


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def other(url: str, store: Store) -> AsyncIterator[Store]:
    """A second store on the same database: what another process sees and does."""
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


def delivery(alias: str, n: int = 0, probe: str = "do", tls: Tls | None = TLS, **kw: object) -> Delivery:
    fields: dict[str, object] = dict(
        alias=alias, probe=probe, received_at=T0 + n, client_ip="192.0.2.1", helo="mx.sender.example",
        mail_from="postmaster@sender.example", rcpt=f"{alias}@{probe}.x.test", tls=tls,
        session_id=f"s{n}", size=100 + n, message_id=f"<{n}@sender.example>",
    )  # fmt: skip
    fields.update(kw)
    return Delivery(**fields)  # type: ignore[arg-type]


def session(sid: str, started: float, alias: str | None = None, client_ip: str = "192.0.2.1") -> Session:
    return Session(id=sid, started=started, client_ip=client_ip, client_port=40000, local_ip="127.0.0.1",
                   local_port=25, alias=alias)  # fmt: skip


async def woken(store: Store, alias: str, write: Callable[[], object], timeout: float = 5.0) -> bool:
    """Does `write()` wake a live page of `alias` on `store`?"""
    await settle(store)
    waiter = asyncio.ensure_future(store.changes.wait(alias, timeout))
    await asyncio.sleep(0.01)  # the page is waiting before the write happens
    result = write()
    if asyncio.iscoroutine(result):
        await result
    return await waiter


_settled: set[int] = set()


async def settle(store: Store) -> None:
    """A cross-process feed wakes every page once when it (re)connects (it may have missed
    something): let that happen before asserting who is woken by what."""
    if id(store) not in _settled:
        _settled.add(id(store))
        await store.changes.wait("settle", 0.3)


# -- tests ----------------------------------------------------------------------


async def test_create_and_get_test(store: Store) -> None:
    await store.create_test(Test("a1", T0, "192.0.2.7"))
    await store.create_test(Test("a2", T0 + 1))
    assert await store.get_test("a1") == Test("a1", T0, "192.0.2.7")
    assert await store.get_test("a2") == Test("a2", T0 + 1, None)
    assert await store.get_test("nope") is None


async def test_a_failing_write_fails_alone_among_concurrent_ones(store: Store) -> None:
    """Writes at the same time may share a transaction (SQLite's group commit): the one that
    fails raises, each of the others is committed and returns."""
    await store.create_test(Test("dup", T0))
    for _ in range(3):
        results = await asyncio.gather(
            store.add_deliveries([delivery("dup", 1)]),
            store.create_test(Test("dup", T0 + 5)),
            store.save_session(session("s-dup", T0, "dup")),
            store.add_deliveries([delivery("dup", 2, probe="dont")]),
            return_exceptions=True,
        )
        assert [isinstance(r, BaseException) for r in results] == [False, True, False, False], results
    assert await store.get_test("dup") == Test("dup", T0)
    assert await store.delivery_totals("dup") == {"do": 3, "dont": 3}
    assert await store.usage("dup") == ({"do": 3, "dont": 3}, 1)


async def test_duplicate_alias_is_refused_and_keeps_the_first(store: Store) -> None:
    await store.create_test(Test("dup", T0, "192.0.2.7"))
    # The store's own error, never the driver's (sqlite3.IntegrityError, psycopg's UniqueViolation).
    with pytest.raises(StoreError):
        await store.create_test(Test("dup", T0 + 5, "192.0.2.8"))
    assert await store.get_test("dup") == Test("dup", T0, "192.0.2.7")


async def test_hostile_smtp_text_is_stored_cleaned(store: Store) -> None:
    """aiosmtpd keeps undecodable bytes as surrogate escapes; NUL is legal in SMTP text but
    not in PostgreSQL. Both backends store the same cleaned text, and a lone surrogate that
    stands for no byte is no driver error either."""
    await store.add_deliveries([delivery("h1", helo="a\x00b\udcffc", mail_from="\udce9@x", rcpt="\ud800@y")])
    (got,) = await store.deliveries_for("h1")
    assert (got.helo, got.mail_from, got.rcpt) == ("a\ufffdb\ufffdc", "\ufffd@x", "\ufffd\ufffd\ufffd@y")
    hostile = dataclasses.replace(session("hs", T0, "h1"), helo="h\udce4lo", rcpts=("\x00@y",), error="\ud800")
    await store.save_session(hostile)
    (got_session,) = await store.sessions_for("h1", [], T0)
    assert (got_session.helo, got_session.rcpts, got_session.error) == (
        "h\ufffdlo",
        ("\ufffd@y",),
        "\ufffd\ufffd\ufffd",
    )


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    """`havedane db upgrade` and open on a file that is not SQLite: the store's error (one
    line for the user), not sqlite3.DatabaseError."""
    path = tmp_path / "havedane.sqlite3"
    path.write_bytes(b"this is not a database, just a file of the same name\n" * 100)
    with pytest.raises(StoreError, match="not a database"):
        upgrade(f"sqlite:///{path}")
    s = open_store(f"sqlite:///{path}")
    with pytest.raises(StoreError, match="not a database"):
        await s.open()


async def test_max_tests_refuses_without_evicting(store: Store) -> None:
    for i in range(3):
        await store.create_test(Test(f"m{i}", T0 + i), max_tests=3)
    with pytest.raises(TooManyTests):
        await store.create_test(Test("m3", T0 + 3), max_tests=3)
    assert [await store.get_test(f"m{i}") is not None for i in range(4)] == [True, True, True, False]
    await store.create_test(Test("m4", T0 + 4))  # no bound given: no bound applied


async def test_max_tests_holds_under_concurrent_creations(store: Store, other: Store) -> None:
    results = await asyncio.gather(
        *(s.create_test(Test(f"c{i}", T0 + i), max_tests=5) for i, s in enumerate([store, other] * 6)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 5
    assert all(isinstance(r, TooManyTests) for r in results if r is not None)


async def test_a_full_store_reclaims_only_old_tests_that_never_received_anything(store: Store) -> None:
    hour = 3600.0
    await store.create_test(Test("r-unused", T0))
    await store.create_test(Test("r-mailed", T0))
    await store.add_deliveries([delivery("r-mailed")])
    await store.create_test(Test("r-session", T0))  # connected, named it, but nothing was accepted
    await store.save_session(session("rs", T0 + 1, alias="r-session"))
    await store.create_test(Test("r-young", T0 + 1.5 * hour))
    now = T0 + 2 * hour
    await store.create_test(Test("r-new", now), max_tests=4, reclaim_before=now - hour)
    assert await store.get_test("r-unused") is None
    for alias in ("r-mailed", "r-session", "r-young", "r-new"):
        assert await store.get_test(alias) is not None
    with pytest.raises(TooManyTests):  # nothing else may go: received something, or too young
        await store.create_test(Test("r-newer", now), max_tests=4, reclaim_before=now - hour)
    assert len(await store.deliveries_for("r-mailed")) == 1


async def test_deliveries_round_trip_in_insertion_order(store: Store) -> None:
    await store.create_test(Test("d1", T0))
    batch = [
        delivery("d1", 0),
        delivery("d1", 1, probe="dont", tls=Tls("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", None)),
    ]
    await store.add_deliveries(batch)
    await store.add_deliveries([delivery("d1", 2, probe="wrong", tls=None, helo=None, message_id=None)])
    await store.add_deliveries([delivery("other", 3)])
    got = await store.deliveries_for("d1")
    assert [d.id for d in got] == sorted(d.id for d in got)
    assert all(isinstance(d.id, int) for d in got)
    expected = [*batch, delivery("d1", 2, probe="wrong", tls=None, helo=None, message_id=None)]
    assert [Delivery(**{**d.__dict__, "id": None}) for d in got] == expected
    assert await store.deliveries_for("nope") == []


async def test_one_call_with_several_aliases(store: Store) -> None:
    await store.add_deliveries([delivery("x1", 0), delivery("x2", 1), delivery("x1", 2)])
    assert [d.size for d in await store.deliveries_for("x1")] == [100, 102]
    assert [d.size for d in await store.deliveries_for("x2")] == [101]


async def test_concurrent_writes_all_commit(store: Store, other: Store) -> None:
    await asyncio.gather(*(s.add_deliveries([delivery("cc", i)]) for i, s in enumerate([store, other] * 50)))
    assert sorted(d.size for d in await store.deliveries_for("cc")) == [100 + i for i in range(100)]


async def test_a_returned_write_is_visible_to_another_process(store: Store, other: Store) -> None:
    await store.create_test(Test("v1", T0))
    await store.add_deliveries([delivery("v1", 0)])
    assert await other.get_test("v1") == Test("v1", T0)
    assert len(await other.deliveries_for("v1")) == 1


async def test_session_saved_then_replaced(store: Store) -> None:
    s = session("sess1", T0, alias=None)
    await store.save_session(s)
    assert await store.sessions_for("s1", ["192.0.2.1"], T0) == [s]
    s = dataclasses.replace(
        s,
        ended=T0 + 2.5,
        helo="mx.sender.example",
        starttls=True,
        tls=TLS,
        mail_from="postmaster@sender.example",
        rcpts=("s1@do.x.test", "s1@dont.x.test"),
        probe="do",
        alias="s1",
        outcome=Outcome.DELIVERED,
        error="ConnectionResetError: gone",
        chain="ecdsa",
    )
    await store.save_session(s)
    (got,) = await store.sessions_for("s1", [], 0)
    assert got == s


async def test_sessions_for_correlates_by_client_address(store: Store) -> None:
    named = session("named", T0 + 5, alias="s2", client_ip="198.51.100.9")
    early = session("early", T0 - 1)  # before the test: not ours
    refusal = session("refusal", T0 + 3)  # no alias, same client, after `since`: correlated
    stranger = session("stranger", T0 + 4, client_ip="203.0.113.5")
    foreign = session("foreign", T0 + 6, alias="someoneelse")
    for s in (named, early, refusal, stranger, foreign):
        await store.save_session(s)
    assert [s.id for s in await store.sessions_for("s2", ["192.0.2.1"], T0)] == ["refusal", "named"]
    assert [s.id for s in await store.sessions_for("s2", ["192.0.2.1", "203.0.113.5"], T0)] == [
        "refusal",
        "stranger",
        "named",
    ]
    assert [s.id for s in await store.sessions_for("s2", [], T0)] == ["named"]


async def test_bounded_reads_keep_the_newest_the_first_of_each_kind_and_count_the_rest(store: Store) -> None:
    await store.create_test(Test("big", T0))
    other_sni = Tls("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", "mx.elsewhere.example")
    kinds = {2: None, 4: other_sni}  # one in plaintext, one with another SNI, among ten
    await store.add_deliveries([delivery("big", n, tls=kinds.get(n, TLS)) for n in range(10)])
    await store.add_deliveries([delivery("big", 10, probe="dont")])
    got = await store.deliveries_for("big", per_probe=3)
    assert [(d.probe, d.received_at - T0) for d in got] == [
        ("do", 0), ("do", 2), ("do", 4), ("do", 7), ("do", 8), ("do", 9), ("dont", 10)
    ]  # fmt: skip
    assert await store.delivery_totals("big") == {"do": 10, "dont": 1}
    assert await store.delivery_totals("nothing") == {}
    for n in range(30):  # sessions that sent MAIL, and a few early ones that did not (refusals)
        s = dataclasses.replace(
            session(f"s{n:02d}", T0 + n, alias="big" if n % 10 else None),
            mail_from=None if n in (1, 3) else "postmaster@sender.example",
        )
        await store.save_session(s)
    bounded = await store.sessions_for("big", ["192.0.2.1"], T0, limit=5)
    assert [s.id for s in bounded] == ["s01", "s03", "s25", "s26", "s27", "s28", "s29"]
    assert await store.session_total("big", ["192.0.2.1"], T0) == 30
    assert await store.session_total("big", [], T0) == 27


async def test_recent_tests_from(store: Store) -> None:
    for i, ip in enumerate(["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.1"]):
        await store.create_test(Test(f"r{i}", T0 + i * 10, ip))
    assert await store.recent_tests_from("192.0.2.1", T0) == 3
    assert await store.recent_tests_from("192.0.2.1", T0 + 5) == 2
    assert await store.recent_tests_from("192.0.2.2", T0) == 1
    assert await store.recent_tests_from("192.0.2.9", 0) == 0


async def test_usage_counts_deliveries_per_probe_and_sessions_naming_the_test(store: Store) -> None:
    assert await store.usage("u1") == ({}, 0)
    await store.add_deliveries([delivery("u1", 0), delivery("u1", 1), delivery("u1", 2, probe="dont")])
    await store.add_deliveries([delivery("u2", 3)])
    for s in (session("a", T0, "u1"), session("b", T0, "u1"), session("c", T0, "u2"), session("d", T0)):
        await store.save_session(s)
    assert await store.usage("u1") == ({"do": 2, "dont": 1}, 2)


async def test_prune_removes_old_tests_with_their_rows(store: Store) -> None:
    await store.create_test(Test("old", T0))
    await store.create_test(Test("new", T0 + 100))
    await store.add_deliveries([delivery("old", 0), delivery("new", 1)])
    for s in (session("o1", T0, "old"), session("n1", T0 + 100, "new"), session("orphan-old", T0 + 10),
              session("orphan-new", T0 + 90)):  # fmt: skip
        await store.save_session(s)
    assert await store.get_test("old") is not None  # read (and cached) before the prune
    assert await store.prune(older_than=T0 + 50, orphan_sessions_older_than=T0 + 50) == 1
    assert await store.get_test("old") is None
    assert await store.deliveries_for("old") == []
    assert await store.sessions_for("old", ["192.0.2.1"], 0) == [session("orphan-new", T0 + 90)]
    assert await store.get_test("new") is not None
    assert len(await store.deliveries_for("new")) == 1
    assert await store.prune(older_than=T0 + 50, orphan_sessions_older_than=T0 + 50) == 0


async def test_prune_keeps_only_the_newest_orphan_sessions(store: Store) -> None:
    await store.create_test(Test("kept", T0))
    await store.save_session(session("named", T0, "kept"))
    for i in range(5):
        await store.save_session(session(f"orphan-{i}", T0 + i))
    await store.prune(older_than=0, orphan_sessions_older_than=0, max_orphans=2)
    left = await store.sessions_for("kept", ["192.0.2.1"], 0)
    assert [s.id for s in left] == ["named", "orphan-3", "orphan-4"]


async def test_closed_store_raises_store_error(url: str) -> None:
    s = open_store(url)
    await s.open()
    await s.close()
    with pytest.raises(StoreError):
        await s.get_test("a")


# -- live updates ---------------------------------------------------------------------


async def test_writes_wake_pages_of_their_alias(store: Store) -> None:
    assert await woken(store, "w1", lambda: store.create_test(Test("w1", T0)))
    assert await woken(store, "w1", lambda: store.add_deliveries([delivery("w1")]))
    assert await woken(store, "w1", lambda: store.save_session(session("sw1", T0, alias="w1")))


async def test_writes_do_not_wake_pages_of_other_aliases(store: Store) -> None:
    assert not await woken(store, "quiet", lambda: store.add_deliveries([delivery("loud")]), timeout=0.5)


async def test_session_without_alias_wakes_only_pages_watching_its_client_address(store: Store) -> None:
    # It may belong to the tests its address delivered to (correlated by client address):
    # a page of such a test watches that address; no other page is woken.
    assert await woken(store, client_key("192.0.2.1"), lambda: store.save_session(session("anon", T0)))
    assert not await woken(store, "any", lambda: store.save_session(session("anon1", T0)), timeout=0.5)
    assert not await woken(
        store, client_key("192.0.2.99"), lambda: store.save_session(session("anon3", T0)), timeout=0.5
    )


async def test_one_wait_watches_several_keys(store: Store) -> None:
    await settle(store)
    waiter = asyncio.ensure_future(store.changes.wait({"k1", client_key("192.0.2.1")}, 5))
    await asyncio.sleep(0.01)
    await store.save_session(session("anon4", T0))
    assert await waiter


async def test_changes_within_a_few_ms_wake_a_page_once(store: Store) -> None:
    """A page re-reads the whole state for each wake-up: a burst of changes is one wake-up."""
    await settle(store)
    wakes = 0

    async def page() -> None:
        nonlocal wakes
        while await store.changes.wait("c1", 0.5):
            wakes += 1

    reader = asyncio.ensure_future(page())
    await asyncio.sleep(0.01)
    before = store.changes.woken
    for _ in range(10):
        store.changes.notify({"c1"})
        for _ in range(5):
            await asyncio.sleep(0)  # the page runs and waits again between the changes
    await reader
    assert wakes == 1 and store.changes.woken - before == 1


async def test_writes_of_another_process_wake_pages(store: Store, other: Store) -> None:
    assert await woken(store, "p1", lambda: other.create_test(Test("p1", T0)))
    assert await woken(store, "p1", lambda: other.add_deliveries([delivery("p1")]))
    assert await woken(store, client_key("192.0.2.1"), lambda: other.save_session(session("anon2", T0)))


async def test_listeners_hear_another_process_without_any_live_page(store: Store, other: Store) -> None:
    """The web app's response cache listens to `changes` even when no SSE stream is open."""
    heard: list[set[str] | None] = []
    store.changes.listeners.append(heard.append)
    await settle(store)
    heard.clear()
    await other.add_deliveries([delivery("l1")])
    for _ in range(100):
        if any(aliases is None or "l1" in aliases for aliases in heard):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no listener call for l1: {heard}")


async def test_a_waiter_wakes_once_per_burst_and_sees_every_write(store: Store, other: Store) -> None:
    """A page re-reads after each wake: whatever it wakes for, it then sees all committed rows."""
    await settle(store)
    seen: list[int] = []

    async def page() -> None:
        while len(seen) < 20:
            await store.changes.wait("b1", 5)
            seen[:] = [d.size for d in await store.deliveries_for("b1")]

    reader = asyncio.ensure_future(page())
    for i in range(20):
        await (store if i % 2 else other).add_deliveries([delivery("b1", i)])
    await asyncio.wait_for(reader, 10)
    assert sorted(seen) == [100 + i for i in range(20)]


# -- schema -----------------------------------------------------------------------------


def set_version(url: str, version: int) -> None:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(f"PRAGMA user_version={version}")
    else:
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE schema_version SET version = %s", (version,))


async def test_upgrade_is_idempotent(url: str) -> None:
    version = VERSIONS["sqlite" if url.startswith("sqlite:") else "postgres"]
    assert upgrade(url) == (version, version)  # the fixture migrated it already


async def test_a_schema_newer_than_known_is_refused_at_open_and_upgrade(url: str) -> None:
    upgrade(url)
    set_version(url, 999)
    s = open_store(url)
    with pytest.raises(SchemaTooNew, match="999.*upgrade havedane"):
        await s.open()
    with pytest.raises(SchemaTooNew):
        upgrade(url)


@pytest.mark.postgres
async def test_postgres_open_asks_for_db_upgrade_on_a_fresh_database(postgres_url: str) -> None:  # noqa: F811
    s = open_store(postgres_url)
    with pytest.raises(StoreError, match=r"schema version 0.*havedane db upgrade"):
        await s.open()
    assert postgres.upgrade(postgres_url) == (0, postgres.SCHEMA_VERSION)
    await s.open()
    await s.close()


@pytest.mark.postgres
async def test_postgres_unreachable_is_one_line_without_password() -> None:
    s = open_store("postgresql://havedane:secret@127.0.0.1:1/havedane?connect_timeout=2")
    with pytest.raises(StoreError) as e:
        await s.open()
    assert "\n" not in str(e.value) and "secret" not in str(e.value)
    assert "127.0.0.1:1/havedane" in str(e.value)


@pytest.mark.postgres
async def test_postgres_feed_survives_a_lost_listen_connection(postgres_url: str) -> None:  # noqa: F811
    """The LISTEN connection is killed server-side: the feed reconnects, wakes every page
    once (it may have missed something), and then carries notifications again."""
    postgres.upgrade(postgres_url)
    store, other = open_store(postgres_url), open_store(postgres_url)
    await store.open()
    await other.open()
    try:
        await settle(store)
        waiter = asyncio.ensure_future(store.changes.wait("k1", 10))
        await asyncio.sleep(0.05)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
            ).fetchone()
        assert killed and killed[0] == 2  # one per store object
        assert await waiter  # woken by the reconnection, with nothing written
        assert await woken(store, "k1", lambda: other.add_deliveries([delivery("k1")]))
    finally:
        await store.close()
        await other.close()


# -- correlation by client address is bounded (issue 11, item 6) ------------------------------

CONFIG = configmod.load(None, env={"HAVEDANE_DOMAIN": "x.test", "HAVEDANE_VERDICT_GRACE": "60"})


def refusal_session(sid: str, started: float, helo: str = "mx.sender.example") -> Session:
    """A sender that completed TLS at `wrong` and left without MAIL: no alias, tied by address only."""
    return dataclasses.replace(
        session(sid, started),
        ended=started + 0.5,
        helo=helo,
        starttls=True,
        probe="wrong",
        tls=Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", "wrong.x.test"),
        outcome=Outcome.TLS_THEN_LEFT,
    )


async def sent(store: Store, alias: str, created: float, first: float, client_ip: str = "192.0.2.1") -> None:
    """A test whose `do` and `dont` arrived from `client_ip`, the first at `first`."""
    await store.create_test(Test(alias, created))
    await store.add_deliveries([delivery(alias, 0, "do", received_at=first, client_ip=client_ip),
                                delivery(alias, 1, "dont", received_at=first + 1, client_ip=client_ip)])  # fmt: skip


async def wrong_of(store: Store, alias: str, now: float) -> dict[str, object]:
    r = await report.load(store, CONFIG, alias, now)
    assert r is not None
    wrong: dict[str, object] = report.to_json(CONFIG, r)["probes"]["wrong"]
    return wrong


async def test_a_later_refusal_is_tied_only_to_the_test_whose_window_it_falls_in(store: Store) -> None:
    # A visitor's first test, then half an hour later a second one from the same mail server.
    await sent(store, "first", T0, T0 + 10)
    await sent(store, "second", T0 + 1800, T0 + 1810)
    await store.save_session(refusal_session("refusal", T0 + 1812))
    first, second = await wrong_of(store, "first", T0 + 3600), await wrong_of(store, "second", T0 + 3600)
    assert (first["status"], first["sessions"]) == ("not-delivered", [])
    assert second["status"] == "refused"
    assert [s["id"] for s in second["sessions"]] == ["refusal"]  # type: ignore[index]
    assert second["sessions"][0]["competing_tests"] == 0  # type: ignore[index]


async def test_a_refusal_long_after_the_grace_period_is_not_tied(store: Store) -> None:
    await sent(store, "t", T0, T0 + 10)
    await store.save_session(refusal_session("late", T0 + 10 + CONFIG.grace + 5))
    await store.save_session(refusal_session("early", T0 + 10 - report.MARGIN - 5))
    assert (await wrong_of(store, "t", T0 + 3600))["sessions"] == []


async def test_sessions_of_havedane_check_are_never_tied_to_a_test(store: Store) -> None:
    await sent(store, "t", T0, T0 + 10)
    await store.save_session(refusal_session("check", T0 + 12, helo=CHECK_HELO))
    assert check.CHECK_HELO == CHECK_HELO  # `havedane check` says this name in its EHLO
    wrong = await wrong_of(store, "t", T0 + 3600)
    assert (wrong["status"], wrong["sessions"]) == ("not-delivered", [])


async def test_two_tests_from_one_address_compete_for_a_refusal_and_say_so(store: Store) -> None:
    await sent(store, "a", T0, T0 + 10)
    await sent(store, "b", T0 + 5, T0 + 20)
    await sent(store, "elsewhere", T0 + 5, T0 + 20, client_ip="198.51.100.7")  # another sender: no competition
    await store.save_session(refusal_session("refusal", T0 + 25))
    for alias in ("a", "b"):
        wrong = await wrong_of(store, alias, T0 + 3600)
        assert wrong["status"] == "refused"
        (s,) = wrong["sessions"]  # type: ignore[misc]
        assert (s["id"], s["correlated_by_client_ip"], s["competing_tests"]) == ("refusal", True, 1)
    r = await report.load(store, CONFIG, "a", T0 + 3600)
    assert r is not None
    assert "could also belong to another test" in wording.summary(r.verdict).text


# -- DNS queries (dnstap) ---------------------------------------------------------------


def dnsq(n: int, qname: str, qtype: str = "TLSA", alias: str | None = None, resolver: str = "198.51.100.53",
         **kw: object) -> DnsQuery:  # fmt: skip
    fields: dict[str, object] = dict(
        time=T0 + n, resolver=resolver, transport="udp", qname=qname, qtype=qtype, dnssec_ok=True,
        rcode="NOERROR", server="192.0.2.53", alias=alias,
    )  # fmt: skip
    fields.update(kw)
    return DnsQuery(**fields)  # type: ignore[arg-type]


def without_id(queries: list[DnsQuery]) -> list[DnsQuery]:
    return [dataclasses.replace(q, id=None) for q in queries]


async def test_dns_queries_of_a_test_and_zone_level_ones_from_its_resolvers_in_its_window(store: Store) -> None:
    await store.create_test(Test("d1", T0))
    mine = [
        dnsq(1, "_25._tcp.d1.do.x.test", alias="d1"),
        dnsq(2, "d1.wrong.x.test", "A", alias="d1", dnssec_ok=False, rcode=None, transport="tcp", server=None),
    ]
    dnskey = dnsq(3, "x.test", "DNSKEY")
    other_resolver = dnsq(4, "x.test", "DNSKEY", resolver="203.0.113.9")
    too_late = dnsq(500, "x.test", "DS")
    stranger = dnsq(5, "_25._tcp.zz.do.x.test", alias="zz")  # no such test: not kept
    assert await store.add_dns_queries([mine[0], dnskey, other_resolver, too_late, stranger, mine[1]], 200) == 5
    found = await store.dns_queries_for("d1", ["198.51.100.53"], T0, T0 + 100)
    assert without_id(found) == [mine[0], mine[1], dnskey]  # oldest first, exact values back
    assert found[2].zone_level and not found[0].zone_level
    assert all(q.id is not None for q in found)
    assert without_id(await store.dns_queries_for("d1", [], T0)) == mine  # no resolver: the test's own only
    both = await store.dns_queries_for("d1", ["198.51.100.53", "203.0.113.9"], T0, None)
    assert without_id(both) == [mine[0], mine[1], dnskey, other_resolver, too_late]
    assert len(await store.dns_queries_for("d1", ["198.51.100.53"], T0, None, limit=1)) == 3


async def test_dns_queries_are_bounded_per_test_keeping_the_first(store: Store, other: Store) -> None:
    await store.create_test(Test("b1", T0))
    batch = [dnsq(i, f"_25._tcp.b1.do.x.test{i}", alias="b1") for i in range(5)]
    assert await store.add_dns_queries(batch, 3) == 3
    # Another reader (another name server) adds more: the bound holds across writers.
    results = await asyncio.gather(
        store.add_dns_queries([dnsq(10, "b1.do.x.test", "A", alias="b1")], 4),
        other.add_dns_queries([dnsq(11, "b1.do.x.test", "AAAA", alias="b1")], 4),
    )
    assert sorted(results) == [0, 1]
    found = await store.dns_queries_for("b1", [], T0)
    assert [q.time for q in found][:3] == [T0, T0 + 1, T0 + 2] and len(found) == 4


async def test_dns_queries_wake_pages_of_their_test(store: Store) -> None:
    await store.create_test(Test("w9", T0))
    assert await woken(store, "w9", lambda: store.add_dns_queries([dnsq(1, "_25._tcp.w9.do.x.test", alias="w9")], 9))


async def test_prune_dns_removes_queries_of_gone_tests_and_old_or_surplus_zone_level_ones(store: Store) -> None:
    await store.create_test(Test("gone", T0))
    await store.create_test(Test("stays", T0 + 100))
    zone = [dnsq(i, "x.test", "DNSKEY") for i in range(5)]
    await store.add_dns_queries(
        [dnsq(0, "gone.do.x.test", alias="gone"), dnsq(1, "stays.do.x.test", alias="stays"), *zone], 200
    )
    await store.prune(older_than=T0 + 50, orphan_sessions_older_than=0)
    assert await store.prune_dns(zone_older_than=T0 + 1, max_zone=2) == 1 + 1 + 2  # gone's, the oldest, surplus
    everything = await store.dns_queries_for("stays", ["198.51.100.53"], 0)
    assert [(q.alias, q.time) for q in everything] == [("stays", T0 + 1), (None, T0 + 3), (None, T0 + 4)]
    assert await store.dns_queries_for("gone", [], 0) == []
    assert await store.prune_dns(zone_older_than=T0 + 1, max_zone=2) == 0


async def test_upgrade_from_version_2_keeps_the_rows_and_adds_dns_queries(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The schema module of the backend: the one that reads SCHEMA_VERSION.
    kind = sqlite_schema if url.startswith("sqlite:") else postgres_schema
    fresh = f"sqlite:///{tmp_path / 'v2.sqlite3'}" if kind is sqlite_schema else url
    if kind is postgres_schema:
        with psycopg.connect(url, autocommit=True) as conn:  # back to an empty database
            conn.execute("DROP TABLE IF EXISTS dns_queries, deliveries, sessions, tests, schema_version")
    monkeypatch.setattr(kind, "SCHEMA_VERSION", 2)
    assert upgrade(fresh) == (0, 2)
    s = open_store(fresh)
    await s.open()
    await s.create_test(Test("v2", T0))
    await s.close()
    monkeypatch.undo()
    assert upgrade(fresh) == (2, 3)
    s = open_store(fresh)
    await s.open()
    try:
        assert await s.get_test("v2") == Test("v2", T0)
        assert await s.add_dns_queries([dnsq(1, "v2.do.x.test", alias="v2")], 200) == 1
    finally:
        await s.close()

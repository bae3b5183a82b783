"""Several `havedane serve` processes on one database: receivers and web frontends apart.

Real processes (`--role smtp`, `--role web`), a real PostgreSQL (tests/pg.py), real SMTP
with STARTTLS and a real SSE stream: what one process writes shows up live on a page
served by another, in order, none missing; a receiver killed mid-burst loses nothing it
acknowledged.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from helpers import Serve, insecure_context, make_setup
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)

SNI = "do.x.test"
PROBES = ("do", "dont", "wrong")


class EventStream:
    """An open `GET /api/tests/{alias}/events`, read by a thread: each `update` event's
    data (the JSON of GET /api/tests/{alias}) with the time it arrived."""

    def __init__(self, url: str) -> None:
        self.updates: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        assert self._open.wait(10), "the event stream did not open"

    def _read(self, url: str) -> None:
        try:
            with httpx.stream("GET", url, timeout=httpx.Timeout(10, read=None)) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                self._open.set()
                event, data = "", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("data:"):
                        data.append(line.partition(":")[2].strip())
                    elif not line:
                        if event == "update":
                            self.updates.put((time.monotonic(), json.loads("\n".join(data))))
                        event, data = "", []
        except httpx.HTTPError:
            return  # the server went away: the stream ends (the test is over)

    def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> tuple[float, dict[str, Any]]:
        """The first update (from now on) that satisfies `predicate`; every update read is kept in `seen`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, body = self.updates.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                last = json.dumps(self.seen[-1:], indent=1)
                raise AssertionError(f"no such update within {timeout}s; last: {last}") from None
            self.seen.append(body)
            if predicate(body):
                return at, body


def message_ids(body: dict[str, Any], probe: str = "do") -> list[str]:
    return [d["message_id"] for d in body["probes"][probe]["deliveries"]]


def message(mid: str) -> bytes:
    return f"Subject: havedane test\r\nMessage-ID: {mid}\r\n\r\nhello\r\n".encode()


def deliver(port: int, addresses: dict[str, str], mid: str) -> bool:
    """One message to every probe over STARTTLS on a new connection: True when it got its 250."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="mx.sender.example", timeout=10)
    try:
        client.ehlo()
        client._host = SNI  # type: ignore[attr-defined]  # smtplib sends this as SNI
        client.starttls(context=insecure_context())
        client.ehlo()
        refused = client.sendmail("postmaster@sender.example", [addresses[p] for p in PROBES], message(mid))
        return refused == {}
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


@dataclass
class Cluster:
    url: str
    web: Serve
    receivers: list[Serve]
    config: Path
    env: dict[str, str] = field(default_factory=dict)

    def deliveries(self, alias: str) -> list[tuple[str, str, int | None]]:
        """(message_id, probe, local port of the receiver) of every stored delivery, from the database."""
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT d.message_id, d.probe, s.local_port FROM deliveries d"
                " LEFT JOIN sessions s ON s.id = d.session_id WHERE d.alias = %s ORDER BY d.id",
                (alias,),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]


def havedane(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "havedane", *args, "--config", str(config)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=60,
    )  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:  # noqa: F811
    """One web process and two receiver processes on one PostgreSQL database."""
    config = make_setup(tmp_path / "hd")
    env = {
        "HAVEDANE_STORE_URL": postgres_url,
        "HAVEDANE_VERDICT_GRACE": "600",
        # The bursts below send hundreds of messages to one test.
        "HAVEDANE_SMTP_MAX_DELIVERIES_PER_PROBE": "100000",
        "HAVEDANE_SMTP_MAX_SESSIONS_PER_TEST": "100000",
    }
    done = havedane(config, env, "db", "upgrade")
    assert done.returncode == 0 and "schema version 0 -> " in done.stdout, done.stderr
    web = Serve(config, env=env, extra_args=["--role", "web"]).start()
    receivers: list[Serve] = []
    try:
        for _ in range(2):
            receivers.append(Serve(config, env=env, extra_args=["--role", "smtp"]).start())
        yield Cluster(postgres_url, web, receivers, config, env)
    finally:
        for p in [web, *receivers]:
            p.stop()


@pytest.mark.postgres
def test_roles_split_the_listeners(cluster: Cluster) -> None:
    web, rx = cluster.web, cluster.receivers[0]
    assert "SMTP on" not in "".join(web.output) and "web on" in "".join(web.output)
    assert "SMTP on" in "".join(rx.output) and "web on" not in "".join(rx.output)
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP("127.0.0.1", web.smtp_port, timeout=5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(rx.web + "/", timeout=5)


@pytest.mark.postgres
def test_deliveries_through_two_receivers_appear_live_on_one_stream(cluster: Cluster) -> None:
    test = cluster.web.new_test()
    alias, addresses = test["alias"], test["addresses"]
    stream = EventStream(f"{cluster.web.web}/api/tests/{alias}/events")
    _, first = stream.until(lambda body: True)
    assert message_ids(first) == []
    sent: list[str] = []
    for i in range(10):
        mid = f"<{i}.{alias}@sender.example>"
        assert deliver(cluster.receivers[i % 2].smtp_port, addresses, mid)
        sent.append(mid)

        # Live: the page shows this message before the next one is even sent.
        def shown(body: dict[str, Any], mid: str = mid) -> bool:
            return all(mid in message_ids(body, p) for p in PROBES)

        stream.until(shown)
    # In order, none missing: every update shows a prefix of what was sent, in sending order.
    for body in stream.seen:
        for probe in PROBES:
            ids = message_ids(body, probe)
            assert ids == sent[: len(ids)], (probe, ids)
    final = stream.seen[-1]
    assert all(message_ids(final, p) == sent for p in PROBES)
    now = cluster.web.result(alias)["probes"]
    assert all(final["probes"][p]["deliveries"] == now[p]["deliveries"] for p in PROBES)
    # ... and both receivers took part.
    deadline = time.monotonic() + 10
    while {port for *_, port in cluster.deliveries(alias)} != {r.smtp_port for r in cluster.receivers}:
        assert time.monotonic() < deadline, cluster.deliveries(alias)
        time.sleep(0.1)


@pytest.mark.postgres
def test_sigkill_of_a_receiver_loses_no_acknowledged_delivery(cluster: Cluster) -> None:
    victim, survivor = cluster.receivers
    test = cluster.web.new_test()
    alias, addresses = test["alias"], test["addresses"]
    acked: dict[str, float] = {}  # message id -> when its 250 arrived
    failed: list[str] = []
    interrupted: list[str] = []  # failed on an open connection (not refused): in flight at the kill
    stop = threading.Event()
    lock = threading.Lock()

    def sender(k: int) -> None:
        i = 0
        while not stop.is_set():
            mid = f"<{k}.{i}.{alias}@sender.example>"
            error: Exception | None = None
            try:
                ok = deliver((victim, survivor)[i % 2].smtp_port, addresses, mid)
            except (smtplib.SMTPException, OSError) as e:
                ok, error = False, e
            with lock:
                if ok:
                    acked[mid] = time.monotonic()
                else:
                    failed.append(mid)
                    if not isinstance(error, ConnectionRefusedError):
                        interrupted.append(mid)
            i += 1

    senders = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(12)]
    for t in senders:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 60:  # a burst under way through both receivers
        assert time.monotonic() < deadline, f"only {len(acked)} deliveries acknowledged"
        time.sleep(0.02)
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.proc.wait(10)
    time.sleep(1.5)  # the survivor carries on
    stop.set()
    for t in senders:
        t.join(30)

    stored = cluster.deliveries(alias)
    rows_per_message: dict[str, int] = {}
    for mid, _, _ in stored:
        rows_per_message[mid] = rows_per_message.get(mid, 0) + 1
    lost = [mid for mid in acked if rows_per_message.get(mid) != len(PROBES)]
    assert lost == [], f"{len(lost)} acknowledged messages not (fully) stored: {lost[:5]}"
    assert interrupted, "the kill interrupted no delivery in flight"
    assert any(at > killed_at for at in acked.values()), "the surviving receiver stopped acknowledging"
    unacked_but_stored = [mid for mid in rows_per_message if mid not in acked]
    print(
        f"acknowledged {len(acked)}, failed {len(failed)} ({len(interrupted)} in flight at the kill), "
        f"stored without a 250 {len(unacked_but_stored)}, acknowledged but lost {len(lost)}"
    )


@pytest.mark.postgres
def test_serve_refuses_a_schema_newer_than_it_knows(cluster: Cluster) -> None:
    with psycopg.connect(cluster.url) as conn:
        conn.execute("UPDATE schema_version SET version = version + 1")
    done = havedane(cluster.config, cluster.env, "serve", "--role", "web", "--web-listen", "127.0.0.1:0")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "newer than this havedane knows" in line and "upgrade havedane" in line
    done = havedane(cluster.config, cluster.env, "db", "upgrade")
    assert done.returncode == 1 and "newer than this havedane knows" in done.stderr


def test_sqlite_processes_on_one_host_see_each_others_writes(tmp_path: Path) -> None:
    """No PostgreSQL: a receiver process and a web process on one SQLite file (PRAGMA data_version)."""
    config = make_setup(tmp_path / "hd")
    web = Serve(config, extra_args=["--role", "web"]).start()
    rx = Serve(config, extra_args=["--role", "smtp"]).start()
    try:
        test = web.new_test()
        stream = EventStream(f"{web.web}/api/tests/{test['alias']}/events")
        stream.until(lambda body: True)
        sent_at = time.monotonic()
        assert deliver(rx.smtp_port, test["addresses"], "<one@sender.example>")
        at, _ = stream.until(lambda body: message_ids(body) == ["<one@sender.example>"], timeout=5)
        assert at - sent_at < 2
    finally:
        rx.stop()
        web.stop()

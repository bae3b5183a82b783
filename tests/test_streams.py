"""Live pages (SSE) under abuse: bounded streams, slow readers dropped, wake-ups only where needed.

The caps and the slow reader are tried against `havedane serve` in this process, SIGTERM
against a real process; the wake-up counts need the store's own `Changes`, so those tests
run the real web server (uvicorn on a loopback port) and the real SQLite store in the
test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from havedane import config as configmod
from havedane.model import Delivery, Outcome, Session, Test, Tls
from havedane.store import Store, open_store
from havedane.web.app import create_app, serve_forever
from helpers import Serve, free_port
from inprocess import InProcess

WAIT = 30.0


def started(setup_dir: Path, **env: str) -> InProcess:
    return InProcess(setup_dir, env={f"HAVEDANE_{k}": v for k, v in env.items()}).start()


def open_stream(
    port: int, alias: str, source: str = "127.0.0.1", rcvbuf: int | None = None
) -> tuple[socket.socket, int]:
    """A raw `GET /api/tests/{alias}/events`: the socket and the response's status code."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window follows it
    sock.settimeout(WAIT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /api/tests/{alias}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "the server closed before answering"
        head += chunk
    return sock, int(head.split()[1])


def server_end_open(server_port: int, client_port: int) -> bool:
    """Does the kernel still hold the server's end of the loopback connection from `client_port`?"""
    want = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote = line.split()[1:3]
        if (local, remote) == want:
            return True
    return False


def refused_as_json(port: int, alias: str, source: str) -> tuple[int, dict[str, Any], str]:
    with (
        httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=WAIT) as http,
        http.stream("GET", f"http://127.0.0.1:{port}/api/tests/{alias}/events") as r,
    ):
        if r.headers["content-type"] != "application/json":
            return r.status_code, {}, ""  # a stream: do not read it
        return r.status_code, json.loads(r.read()), r.headers.get("retry-after", "")


def test_streams_are_capped_per_client_address_and_in_total(setup_dir: Path) -> None:
    server = started(setup_dir, WEB_MAX_STREAMS_PER_CLIENT="2", WEB_MAX_STREAMS="3")
    opened: list[socket.socket] = []
    try:
        alias = server.new_test()["alias"]
        for _ in range(2):
            sock, status = open_stream(server.web_port, alias)
            opened.append(sock)
            assert status == 200
        status, body, retry = refused_as_json(server.web_port, alias, "127.0.0.1")
        assert status == 429 and "stream" in body["error"] and retry
        sock, status = open_stream(server.web_port, alias, source="127.0.0.2")
        opened.append(sock)
        assert status == 200
        status, body, retry = refused_as_json(server.web_port, alias, "127.0.0.3")
        assert status == 503 and "stream" in body["error"] and retry
        # The page itself and the JSON API still answer (the page falls back to polling).
        assert server.result(alias)["alias"] == alias
        # A closed stream frees its slot.
        opened.pop(0).close()
        deadline = time.monotonic() + WAIT
        while True:
            sock, status = open_stream(server.web_port, alias)
            opened.append(sock)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200
    finally:
        for sock in opened:
            sock.close()
        server.stop()
    assert "Traceback" not in "".join(server.output)


def test_a_stream_whose_reader_never_reads_is_dropped(setup_dir: Path) -> None:
    server = started(setup_dir, WEB_MAX_STREAMS_PER_CLIENT="1", WEB_STREAM_SEND_TIMEOUT="2")
    try:
        alias = server.new_test()["alias"]
        stalled, status = open_stream(server.web_port, alias, rcvbuf=4096)  # never read from here on
        assert status == 200
        reader, status = open_stream(server.web_port, alias, source="127.0.0.2")
        assert status == 200
        received = bytearray()

        def drain() -> None:
            reader.setblocking(False)
            try:
                while chunk := reader.recv(1 << 20):
                    received.extend(chunk)
            except BlockingIOError:
                pass

        # Another process writes (as a receiver would): every write changes the whole state,
        # which grows to megabytes, far more than the stalled reader's buffers hold.
        with sqlite3.connect(server.config.parent / "havedane.sqlite3", timeout=WAIT) as conn:
            for i in range(60):
                conn.execute(
                    "INSERT INTO deliveries (alias, probe, received_at, client_ip, helo, mail_from, rcpt, size)"
                    " VALUES (?, 'do', ?, '192.0.2.1', ?, 'a@sender.example', ?, 10)",
                    (alias, time.time(), "h" * 20000 + str(i), f"{alias}@do.x.test"),
                )
                conn.commit()
                time.sleep(0.15)  # past the writer's poll for other processes' commits
                drain()
        # The stalled stream is dropped within its send timeout: the server's end of it is gone,
        # and its address may open a stream again.
        stalled_port = stalled.getsockname()[1]
        deadline = time.monotonic() + 2 + WAIT
        while server_end_open(server.web_port, stalled_port) and time.monotonic() < deadline:
            drain()
            time.sleep(0.2)
        assert not server_end_open(server.web_port, stalled_port), "the stalled stream is still open"
        status = 0
        while time.monotonic() < deadline:
            again, status = open_stream(server.web_port, alias)
            again.close()
            if status == 200:
                break
            drain()
            time.sleep(0.2)
        assert status == 200, "the stalled stream still holds its slot"
        # The stream that reads went on and saw the latest state.
        deadline = time.monotonic() + WAIT
        while b"h" * 20000 + b"59" not in received and time.monotonic() < deadline:
            drain()
            time.sleep(0.1)
        assert b"h" * 20000 + b"59" in received
        stalled.close()
        reader.close()
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.output)


def test_sigterm_with_streams_open_ends_within_the_stop_timeout_without_tracebacks(setup_dir: Path) -> None:
    server = Serve(setup_dir).start()
    alias = server.new_test()["alias"]
    streams = [open_stream(server.web_port, alias, rcvbuf=4096 if i % 2 else None)[0] for i in range(10)]
    try:
        assert server.proc is not None
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(15)  # TimeoutStopSec in deploy/havedane.service
        took = time.monotonic() - began
    finally:
        for sock in streams:
            sock.close()
        server.stop()
    output = "".join(server.output)
    assert code == 0 and took < 10, (code, took, output)
    assert "Traceback" not in output and "ERROR" not in output, output


# -- wake-ups (in-process: they are counted on the process's own change feed) -------------------------


@dataclass
class Web:
    store: Store
    port: int
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def watch(self, alias: str) -> None:
        """Open the test's event stream and keep its `update` events in `events[alias]`."""
        seen = self.events.setdefault(alias, [])
        opened = asyncio.Event()

        async def read() -> None:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(WAIT, read=None)) as http,
                http.stream("GET", f"http://127.0.0.1:{self.port}/api/tests/{alias}/events") as r,
            ):
                assert r.status_code == 200
                opened.set()
                event, data = "", ""
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("data:"):
                        data = line.partition(":")[2].strip()
                    elif not line and event == "update":
                        seen.append(json.loads(data))

        self.tasks.append(asyncio.create_task(read()))
        await asyncio.wait_for(opened.wait(), WAIT)
        await until(lambda: bool(seen), f"the first event of {alias}")


async def until(condition: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def web(setup_dir: Path) -> AsyncIterator[Web]:
    config = configmod.load(setup_dir, env={"HAVEDANE_WEB_MAX_STREAMS_PER_CLIENT": "100"})
    store = open_store(config.store_url)
    await store.open()
    port = free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve_forever(create_app(config, store), "127.0.0.1", port, stop, ready))
    await asyncio.wait_for(ready.wait(), WAIT)
    w = Web(store, port)
    yield w
    for task in w.tasks:
        task.cancel()
    await asyncio.gather(*w.tasks, return_exceptions=True)
    stop.set()
    await server
    await store.close()


def stranger(sid: str, client_ip: str, outcome: Outcome = Outcome.LEFT, probe: str | None = None) -> Session:
    now = time.time()
    return Session(id=sid, started=now, ended=now, client_ip=client_ip, client_port=40000, local_ip="127.0.0.1",
                   local_port=25, helo="stranger.example", outcome=outcome, probe=probe,
                   tls=Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", "wrong.x.test") if probe else None)  # fmt: skip


@pytest.mark.anyio
async def test_a_stranger_session_wakes_no_stream_and_a_refusal_reaches_its_own_test(web: Web) -> None:
    now = time.time()
    others = [f"other{i:011d}" for i in range(30)]
    for alias in [*others, "mine000000000000"]:
        await web.store.create_test(Test(alias, now))
    # The other tests got mail from other senders; "mine" from 192.0.2.1.
    for i, alias in enumerate(others):
        await web.store.add_deliveries([Delivery(alias, "do", now, f"198.51.100.{i % 3}", "mx.example",
                                                 "a@example.org", f"{alias}@do.x.test", None)])  # fmt: skip
    await web.store.add_deliveries(
        [Delivery("mine000000000000", "do", now, "192.0.2.1", "mx.sender.example", "a@sender.example",
                  "mine000000000000@do.x.test", None)]
    )  # fmt: skip
    for alias in [*others, "mine000000000000"]:
        await web.watch(alias)
    await asyncio.sleep(0.2)  # every stream waits for its next change
    before = web.store.changes.woken
    for i in range(50):  # strangers: sessions tied to no test, from addresses that delivered to none
        await web.store.save_session(stranger(f"stranger{i}", f"203.0.113.{i}"))
    await asyncio.sleep(0.2)
    assert web.store.changes.woken - before == 0
    # A refusal (TLS, then QUIT without MAIL) from the address that delivered to "mine" wakes its
    # stream, and only its stream, and the page shows it as correlated by client address.
    await web.store.save_session(stranger("refusal", "192.0.2.1", Outcome.TLS_THEN_LEFT, "wrong"))
    mine = web.events["mine000000000000"]
    await until(lambda: mine[-1]["probes"]["wrong"]["sessions"], "the refusal on its test's stream")
    (shown,) = mine[-1]["probes"]["wrong"]["sessions"]
    assert shown["id"] == "refusal" and shown["correlated_by_client_ip"] is True
    assert web.store.changes.woken - before == 1
    assert all(len(web.events[a]) == 1 for a in others)

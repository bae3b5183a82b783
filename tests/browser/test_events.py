"""The live stream behind the page: one event per change, resumable with Last-Event-ID."""

from __future__ import annotations

import http.client
import queue
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import set_up

from .browser_harness import SERVER_ENV, Server, deliver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(set_up(tmp_path_factory.mktemp("events") / "setup"), SERVER_ENV).start()
    yield srv
    srv.stop()


class Stream:
    """An SSE client: a thread reads lines, the test takes events with a timeout."""

    def __init__(self, server: Server, alias: str, last_id: str | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.web_port, timeout=30)
        headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})
        self.conn.request("GET", f"/api/tests/{alias}/events", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("content-type", "").startswith("text/event-stream")
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for raw in self.response:
                self.lines.put(raw.decode())
        except (OSError, ValueError, AttributeError):  # closed by the test
            pass

    def next_event(self, timeout: float) -> dict[str, str] | None:
        """The next `update` event (fields by name), or None when none comes within `timeout`."""
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line in ("\n", "\r\n"):
                if fields.get("event") == "update":
                    return fields
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.rstrip("\r\n").partition(":")
                fields[name] = value.removeprefix(" ")
        return None

    def close(self) -> None:
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)  # ends the reader's blocking read
        self.conn.close()


def page_state(server: Server, alias: str) -> str:
    with urllib.request.urlopen(f"{server.web}/t/{alias}?fragment=1", timeout=5) as response:
        match = re.search(r'id="verdict"[^>]*data-state="([0-9a-f]+)"', response.read().decode())
    assert match is not None
    return match.group(1)


def test_stream_resumes_from_last_event_id(server: Server, tmp_path: Path) -> None:
    test = server.new_test()
    first = Stream(server, test["alias"])
    event = first.next_event(5)
    assert event is not None and event["id"]
    first.close()
    assert page_state(server, test["alias"]) == event["id"]  # the page knows which state it shows

    resumed = Stream(server, test["alias"], last_id=event["id"])
    try:
        assert resumed.next_event(1.0) is None  # nothing new: nothing sent again
        deliver(server.smtp_port, test["addresses"]["do"])
        news = resumed.next_event(5)
        assert news is not None and news["id"] != event["id"]
        assert '"status":"delivered"' in news["data"]
    finally:
        resumed.close()

"""No acknowledged delivery is lost: SIGKILL `havedane serve` in the middle of a burst of
concurrent deliveries, start it again, and find every delivery that got its `250`."""

from __future__ import annotations

import random
import signal
import socket
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import Serve, insecure_context

CLIENTS = 16
WAIT = 30.0


@dataclass
class Burst:
    """Deliveries by CLIENTS threads, each a new connection, until `stop`; what got a 250."""

    port: int
    rcpts: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    acked: set[str] = field(default_factory=set)  # Message-IDs whose DATA got 250
    errors_before_stop: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deliver(self, client: int, n: int) -> None:
        message_id = f"<c{client}-n{n}@durability.example>"
        rcpt = self.rcpts[(client + n) % len(self.rcpts)]
        sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
        try:
            f = sock.makefile("rb")

            def reply() -> int:
                while True:
                    line = f.readline()
                    if not line:
                        raise ConnectionError("closed")
                    if line[3:4] != b"-":
                        return int(line[:3])

            def cmd(line: str, want: int) -> None:
                sock.sendall(line.encode() + b"\r\n")
                got = reply()
                if got != want:
                    raise RuntimeError(f"{line!r}: {got}")

            if reply() != 220:
                raise RuntimeError("no greeting")
            cmd("EHLO durability.example", 250)
            if client % 2:  # half the clients over TLS, as MTAs do
                cmd("STARTTLS", 220)
                sock = insecure_context().wrap_socket(sock, server_hostname="do.x.test")
                f = sock.makefile("rb")
                cmd("EHLO durability.example", 250)
            cmd("MAIL FROM:<burst@durability.example>", 250)
            cmd(f"RCPT TO:<{rcpt}>", 250)
            cmd("DATA", 354)
            cmd(f"Message-ID: {message_id}\r\nSubject: burst\r\n\r\nmessage {n} of client {client}\r\n.", 250)
            with self.lock:
                self.acked.add(message_id)
            sock.sendall(b"QUIT\r\n")
        finally:
            sock.close()

    def client(self, client: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                self.deliver(client, n)
            except (OSError, RuntimeError, ConnectionError) as e:
                if not self.stop.is_set():
                    with self.lock:
                        self.errors_before_stop.append(f"client {client}: {type(e).__name__}: {e}")
                return

    def run_until_killed(self, server: Serve, after: int) -> None:
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + WAIT * 2
        while len(self.acked) < after and time.monotonic() < deadline and not self.errors_before_stop:
            time.sleep(0.01)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)  # mid-burst: connections open, DATA in flight
        self.stop.set()
        server.proc.wait(WAIT)
        for t in threads:
            t.join(WAIT * 2)
        assert not any(t.is_alive() for t in threads)


def test_every_acknowledged_delivery_survives_sigkill(setup_dir: Path) -> None:
    # Up to ~350 messages to 4 tests, each a new connection: above the per-test limits' defaults.
    limits = {"HAVEDANE_SMTP_MAX_DELIVERIES_PER_PROBE": "100000", "HAVEDANE_SMTP_MAX_SESSIONS_PER_TEST": "100000"}
    server = Serve(setup_dir, env=limits).start()
    aliases = []
    rcpts = []
    for _ in range(4):
        t = server.new_test()
        aliases.append(t["alias"])
        rcpts += list(t["addresses"].values())
    burst = Burst(server.smtp_port, rcpts)
    burst.run_until_killed(server, after=random.randint(50, 300))
    assert not burst.errors_before_stop, burst.errors_before_stop[:5]
    assert len(burst.acked) >= 50, "the burst never got going"

    with sqlite3.connect(setup_dir.parent / "havedane.sqlite3") as conn:  # as the crash left it
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {r[0] for r in conn.execute("SELECT message_id FROM deliveries")}
    missing = burst.acked - stored
    assert not missing, f"{len(missing)} of {len(burst.acked)} acknowledged deliveries lost: {sorted(missing)[:5]}"

    print(f"SIGKILL after {len(burst.acked)} acknowledged deliveries; {len(stored)} in the database")
    again = Serve(setup_dir).start()
    try:
        shown: set[str] = set()
        for alias in aliases:
            body = again.result(alias)
            shown |= {d["message_id"] for p in body["probes"].values() for d in p["deliveries"]}
        assert burst.acked <= shown
        assert shown == stored  # the page shows what the database holds, nothing else
    finally:
        again.stop()
    assert "Traceback" not in "".join(again.output)

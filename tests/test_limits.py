"""Every limit, exceeded over real sockets against a real `havedane serve`, with the answer it documents.

SECURITY.md has the table of these hostile inputs and what the server answers. The
message size limit (552) is in test_receiver.py and the stored-tests bound (503) in
test_web.py; both appear again here only as part of the flood.
"""

from __future__ import annotations

import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import Serve, insecure_context, send

WAIT = 30.0  # seconds: the bound for anything that should happen "soon" on a loaded machine


class Client:
    """A raw SMTP client: bytes in, reply codes out, from a chosen loopback source address."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=WAIT, source_address=(source, 0)
        )
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, bytes]:
        """The next reply: (code, text of its last line); (0, b"") when the server closed."""
        while True:
            line = self.file.readline()
            if not line:
                return 0, b""
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].rstrip(b"\r\n")

    def cmd(self, line: bytes | str) -> tuple[int, bytes]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def starttls(self, sni: str | None = None) -> None:
        assert self.cmd("STARTTLS")[0] == 220
        self.sock = insecure_context().wrap_socket(self.sock, server_hostname=sni)
        self.file = self.sock.makefile("rb")

    def closed(self) -> bool:
        """True once the server has closed the connection (reads what is left first)."""
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for c in opened:
        c.close()


def started(setup_dir: Path, **env: str) -> Serve:
    return Serve(setup_dir, env={"HAVEDANE_VERDICT_GRACE": "2", **{f"HAVEDANE_{k}": v for k, v in env.items()}}).start()


@pytest.fixture
def limited(setup_dir: Path) -> Iterator[Serve]:
    server = started(setup_dir, SMTP_MAX_RECIPIENTS="2")
    yield server
    server.stop()
    assert "Traceback" not in "".join(server.output)


def db(server: Serve) -> sqlite3.Connection:
    return sqlite3.connect(server.config.parent / "havedane.sqlite3", timeout=30)


def eventually(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def mail_to(c: Client, *rcpts: str) -> None:
    assert c.cmd("EHLO limits.example")[0] == 250
    assert c.cmd("MAIL FROM:<a@limits.example>")[0] == 250
    for rcpt in rcpts:
        assert c.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
    assert c.cmd("DATA")[0] == 354


# -- connections --------------------------------------------------------------------------------


def test_max_connections_answers_421_4_7_0_instead_of_the_greeting(setup_dir: Path, clients: list[Client]) -> None:
    server = started(setup_dir, SMTP_MAX_CONNECTIONS="3")
    try:
        for i in range(3):  # three different addresses: the per-client cap is not what stops the fourth
            clients.append(Client(server.smtp_port, f"127.0.0.{10 + i}"))
            assert clients[-1].reply()[0] == 220
        extra = Client(server.smtp_port, "127.0.0.20")
        clients.append(extra)
        code, text = extra.reply()
        assert (code, text[:6]) == (421, b"4.7.0 ")
        assert extra.closed()
        assert all(c.cmd("NOOP")[0] == 250 for c in clients[:3])  # the admitted ones go on
        clients[0].cmd("QUIT")
        clients[0].close()

        def admitted() -> bool:  # the slot is freed when the server sees the close
            c = Client(server.smtp_port, "127.0.0.21")
            clients.append(c)
            return c.reply()[0] == 220

        eventually(admitted, "a connection admitted after one of three closed")
    finally:
        server.stop()


def test_per_client_connections_answer_421_4_7_0_and_other_clients_still_get_in(
    setup_dir: Path, clients: list[Client]
) -> None:
    server = started(setup_dir, SMTP_MAX_CONNECTIONS_PER_CLIENT="2")
    try:
        for _ in range(2):
            clients.append(Client(server.smtp_port, "127.0.0.2"))
            assert clients[-1].reply()[0] == 220
        third = Client(server.smtp_port, "127.0.0.2")
        clients.append(third)
        code, text = third.reply()
        assert code == 421 and text.startswith(b"4.7.0 ") and b"your address" in text
        assert third.closed()
        other = Client(server.smtp_port, "127.0.0.3")
        clients.append(other)
        assert other.reply()[0] == 220
        assert send(server.smtp_port, [server.new_test()["addresses"]["do"]]) == {}  # from 127.0.0.1
    finally:
        server.stop()


def test_proxy_connections_give_back_their_slot(setup_dir: Path, clients: list[Client]) -> None:
    """Behind a PROXY-protocol balancer the per-client cap counts the balancer's address (the
    header comes later): each connection's slot must be released for that same address, not for
    the client the header names, or the balancer is locked out after `cap` connections."""
    server = started(setup_dir, SMTP_PROXY_PROTOCOL="true", SMTP_MAX_CONNECTIONS_PER_CLIENT="2")
    try:
        for i in range(7):  # sequential, through one "balancer" (127.0.0.1), more than the cap of 2
            c = Client(server.smtp_port)
            clients.append(c)
            c.send(f"PROXY TCP4 203.0.113.{i + 1} 127.0.0.1 4000{i} 25\r\n".encode())
            assert c.reply()[0] == 220, f"connection {i + 1} through the balancer"
            assert c.cmd("QUIT")[0] == 221
            assert c.closed()
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.output)


# -- idle timeout -------------------------------------------------------------------------------


def test_idle_connection_gets_421_4_4_2_and_is_closed_and_recorded_as_timeout(
    setup_dir: Path, clients: list[Client]
) -> None:
    server = started(setup_dir, SMTP_TIMEOUT="1")
    try:
        plain = Client(server.smtp_port)
        clients.append(plain)
        assert plain.reply()[0] == 220
        assert plain.cmd("EHLO idle.example")[0] == 250
        code, text = plain.reply()  # sent nothing more: the server gives up
        assert (code, text[:6]) == (421, b"4.4.2 ")
        assert plain.closed()

        tls = Client(server.smtp_port)  # the same after STARTTLS, inside TLS
        clients.append(tls)
        assert tls.reply()[0] == 220
        assert tls.cmd("EHLO idle.example")[0] == 250
        tls.starttls("do.x.test")
        assert tls.reply()[0] == 421
        assert tls.closed()
        tls.close()  # the server's TLS shutdown waits for this (up to 30 s) before the session ends

        # A command trickled a byte at a time never completes, so never restarts the timer.
        slow = Client(server.smtp_port)
        clients.append(slow)
        assert slow.reply()[0] == 220
        deadline = time.monotonic() + WAIT
        with pytest.raises(OSError):
            while time.monotonic() < deadline:
                slow.send(b"N")
                time.sleep(0.1)
        assert time.monotonic() < deadline, "the trickling client was never disconnected"

        with db(server) as conn:
            eventually(
                lambda: conn.execute("SELECT count(*) FROM sessions WHERE outcome = 'timeout'").fetchone()[0] == 3,
                "the three sessions saved with the outcome timeout",
            )
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.output)


def test_a_message_trickled_slower_than_the_timeout_is_cut_off(setup_dir: Path, clients: list[Client]) -> None:
    """DATA is one command: its text lines do not restart the timer, so the whole message must
    arrive within [smtp] timeout of the DATA command (a slow-loris sender cannot hold a slot)."""
    server = started(setup_dir, SMTP_TIMEOUT="1")
    try:
        t = server.new_test()
        c = Client(server.smtp_port)
        clients.append(c)
        assert c.reply()[0] == 220
        mail_to(c, t["addresses"]["do"])
        deadline = time.monotonic() + WAIT
        with pytest.raises(OSError):
            while time.monotonic() < deadline:
                c.send(b"a line of text\r\n")
                time.sleep(0.1)
        try:
            assert c.reply()[0] == 421
        except ConnectionResetError:
            pass  # our writes after the close made the server's kernel reset the connection
        assert server.result(t["alias"])["probes"]["do"]["deliveries"] == []
    finally:
        server.stop()


def test_the_idle_timer_restarts_at_every_command(setup_dir: Path, clients: list[Client]) -> None:
    """The timeout bounds silence, not the session: a sender that keeps talking is not cut off."""
    server = started(setup_dir, SMTP_TIMEOUT="5")
    try:
        c = Client(server.smtp_port)
        clients.append(c)
        assert c.reply()[0] == 220
        for _ in range(4):  # 6 s in all, more than the timeout; 3.5 s of margin per pause
            time.sleep(1.5)
            assert c.cmd("NOOP")[0] == 250
    finally:
        server.stop()


# -- commands ------------------------------------------------------------------------------------


def ehlo_extensions(c: Client) -> list[bytes]:
    c.send(b"EHLO limits.example\r\n")
    lines = []
    while (line := c.file.readline())[3:4] == b"-":
        lines.append(line[4:].rstrip(b"\r\n"))
    assert line[:3] == b"250", line
    return lines + [line[4:].rstrip(b"\r\n")]


def test_auth_is_not_offered_and_counts_as_an_unknown_command(limited: Serve, clients: list[Client]) -> None:
    """Nothing here authenticates anyone (RFC 4954 is not implemented): AUTH is not advertised,
    plain or inside TLS, and is answered like any unknown command, so that it counts toward
    aiosmtpd's limit of 5 (was: advertised after STARTTLS; a long AUTH LOGIN answer gave 451 and
    a logged traceback, again and again on one connection)."""
    c = Client(limited.smtp_port)
    clients.append(c)
    assert c.reply()[0] == 220
    assert not [e for e in ehlo_extensions(c) if e.upper().startswith(b"AUTH")]
    c.starttls("do.x.test")
    assert not [e for e in ehlo_extensions(c) if e.upper().startswith(b"AUTH")]
    assert c.cmd("AUTH LOGIN")[0] == 500
    assert c.cmd(b"dXNlcg" * 400)[0] == 500  # what would have been the answer: a (long) bad line
    assert c.cmd("AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=")[0] == 500
    assert c.cmd("AUTH CRAM-MD5")[0] == 500
    assert c.cmd("AUTH")[0] == 500
    code, text = c.cmd("AUTH LOGIN")  # the fifth: goodbye
    assert (code, text[:6]) == (502, b"5.5.1 ")
    assert c.closed()


# -- one message ----------------------------------------------------------------------------------


def message(c: Client, *rcpts: str) -> tuple[int, bytes]:
    """One message to `rcpts` (each must get 250); the reply to its text."""
    mail_to(c, *rcpts)
    return c.cmd(b"Subject: x\r\n\r\nx\r\n.")


def test_a_recipient_named_twice_in_one_message_is_recorded_once(limited: Serve, clients: list[Client]) -> None:
    """The same probe address again (in any case) is accepted but adds nothing: one delivery per
    probe per message (was: one delivery per copy, 20 with max_recipients 20)."""
    t = limited.new_test()
    do = t["addresses"]["do"]
    c = Client(limited.smtp_port)
    clients.append(c)
    assert c.reply()[0] == 220
    code, text = message(c, do, do.upper())
    assert code == 250 and text.endswith(b"recorded 1 deliveries")
    body = limited.wait_for(t["alias"], lambda b: b["probes"]["do"]["deliveries"])
    assert len(body["probes"]["do"]["deliveries"]) == 1
    with db(limited) as conn:
        assert conn.execute("SELECT count(*) FROM deliveries WHERE alias = ?", (t["alias"],)).fetchone()[0] == 1


def test_messages_beyond_max_messages_per_connection_get_421_4_7_0(setup_dir: Path, clients: list[Client]) -> None:
    server = started(setup_dir, SMTP_MAX_MESSAGES_PER_CONNECTION="3")
    try:
        t = server.new_test()
        c = Client(server.smtp_port)
        clients.append(c)
        assert c.reply()[0] == 220
        for probe in ("do", "dont", "wrong"):
            assert message(c, t["addresses"][probe])[0] == 250
        code, text = c.cmd("MAIL FROM:<a@limits.example>")
        assert (code, text[:6]) == (421, b"4.7.0 ")
        assert c.closed()
        body = server.wait_for(t["alias"], lambda b: all(p["deliveries"] for p in b["probes"].values()))
        assert [len(p["deliveries"]) for p in body["probes"].values()] == [1, 1, 1]  # all acknowledged, kept
        c2 = Client(server.smtp_port)  # a new connection starts again
        clients.append(c2)
        assert c2.reply()[0] == 220
        assert message(c2, t["addresses"]["do"])[0] == 250
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.output)


def test_deliveries_beyond_max_deliveries_per_probe_get_550_5_2_2(setup_dir: Path, clients: list[Client]) -> None:
    """Per probe of a test, counted from the store at start too; other probes still take mail,
    and every acknowledged delivery stays."""
    server = started(setup_dir, SMTP_MAX_DELIVERIES_PER_PROBE="3")
    try:
        t = server.new_test()
        a = t["addresses"]
        c = Client(server.smtp_port)
        clients.append(c)
        assert c.reply()[0] == 220
        for _ in range(3):
            assert message(c, a["do"])[0] == 250
        assert c.cmd("EHLO limits.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@limits.example>")[0] == 250
        code, text = c.cmd(f"RCPT TO:<{a['do']}>")
        assert (code, text[:6]) == (550, b"5.2.2 ")
        assert c.cmd(f"RCPT TO:<{a['dont']}>")[0] == 250
        c.close()
    finally:
        server.stop()
    again = started(setup_dir, SMTP_MAX_DELIVERIES_PER_PROBE="3")  # the count survives a restart
    try:
        refused = send(again.smtp_port, [a["do"], a["wrong"]])
        assert list(refused) == [a["do"]] and refused[a["do"]][0] == 550
        body = again.result(t["alias"])
        assert [len(p["deliveries"]) for p in body["probes"].values()] == [3, 0, 1]
    finally:
        again.stop()
    assert "Traceback" not in "".join(server.output + again.output)


def test_sessions_beyond_max_sessions_per_test_get_550_5_2_2(setup_dir: Path, clients: list[Client]) -> None:
    """Connections that name a test (RCPT) count toward its sessions even when they send nothing."""
    server = started(setup_dir, SMTP_MAX_SESSIONS_PER_TEST="2")
    try:
        t = server.new_test()
        for i in range(3):
            c = Client(server.smtp_port)
            clients.append(c)
            assert c.reply()[0] == 220
            assert c.cmd("EHLO limits.example")[0] == 250
            assert c.cmd("MAIL FROM:<a@limits.example>")[0] == 250
            code, text = c.cmd(f"RCPT TO:<{t['addresses']['do']}>")
            if i < 2:
                assert code == 250
                assert c.cmd(f"RCPT TO:<{t['addresses']['dont']}>")[0] == 250  # the same session again
            else:
                assert (code, text[:6]) == (550, b"5.2.2 ")
            c.cmd("QUIT")
        with db(server) as conn:
            eventually(
                lambda: conn.execute("SELECT count(*) FROM sessions WHERE outcome != 'open'").fetchone()[0] == 3,
                "the three sessions saved",
            )
            assert conn.execute("SELECT count(*) FROM sessions WHERE alias = ?", (t["alias"],)).fetchone()[0] == 2
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.output)


def test_recipients_beyond_max_recipients_get_452_4_5_3(limited: Serve, clients: list[Client]) -> None:
    t = limited.new_test()
    a = t["addresses"]
    c = Client(limited.smtp_port)
    clients.append(c)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO limits.example")[0] == 250
    assert c.cmd("MAIL FROM:<a@limits.example>")[0] == 250
    assert c.cmd(f"RCPT TO:<{a['do']}>")[0] == 250
    assert c.cmd(f"RCPT TO:<{a['dont']}>")[0] == 250
    code, text = c.cmd(f"RCPT TO:<{a['wrong']}>")
    assert (code, text[:6]) == (452, b"4.5.3 ")
    assert c.cmd("DATA")[0] == 354
    assert c.cmd(b"Subject: two\r\n\r\nhi\r\n.")[0] == 250
    body = limited.wait_for(t["alias"], lambda b: b["probes"]["dont"]["deliveries"])
    assert [len(p["deliveries"]) for p in body["probes"].values()] == [1, 1, 0]


@pytest.mark.parametrize("length", [513, 1001, 100_000, 3_000_000])
def test_command_line_too_long_gets_500_and_the_session_goes_on(
    limited: Serve, clients: list[Client], length: int
) -> None:
    """RFC 5321 §4.5.3.1.4: 512 octets for a command line with its CRLF; aiosmtpd allows 512
    without it (MAIL a little more for its SIZE and SMTPUTF8 parameters) and answers 500 once
    the line ends, discarding it as it arrives (a line with no end is cut off by the timeout)."""
    c = Client(limited.smtp_port)
    clients.append(c)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO limits.example")[0] == 250
    assert c.cmd(b"NOOP " + b"x" * (512 - 5))[0] == 250
    code, text = c.cmd(b"NOOP " + b"x" * (length - 5))
    assert (code, text) == (500, b"Command line too long")
    assert c.cmd(b"MAIL FROM:<" + b"a" * max(length, 600) + b"@limits.example>")[0] == 500
    assert c.cmd("NOOP")[0] == 250
    assert c.cmd("MAIL FROM:<a@limits.example>")[0] == 250


def test_mail_command_limit_belongs_to_its_connection(limited: Serve, clients: list[Client]) -> None:
    """aiosmtpd 1.4.6 keeps the per-command limits on the class: each new connection reset the
    MAIL limit of every other to 512, so a MAIL with SIZE= (allowed 548 after EHLO) got 500 when
    another sender connected in between. The receiver gives each connection its own."""
    t = limited.new_test()
    first = Client(limited.smtp_port)
    clients.append(first)
    assert first.reply()[0] == 220
    assert first.cmd("EHLO first.example")[0] == 250
    second = Client(limited.smtp_port)
    clients.append(second)
    assert second.reply()[0] == 220
    mail = f"MAIL FROM:<{'a' * 480}@limits.example> SIZE=100"
    assert 512 < len(mail) <= 548
    assert first.cmd(mail)[0] == 250
    assert first.cmd(f"RCPT TO:<{t['addresses']['do']}>")[0] == 250
    assert second.cmd(mail)[0] == 500  # no EHLO there: 512


def peak_rss(server: Serve) -> int:
    """The server process's peak resident memory so far (VmHWM), in bytes."""
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def test_a_message_of_blank_lines_costs_about_its_size_in_memory(limited: Serve, clients: list[Client]) -> None:
    """aiosmtpd 1.4.6 kept each DATA line as an object of its own: 1 MiB of blank lines cost
    ~44 MiB, per connection. Four connections each send that much at once; the server's peak
    memory may grow by at most 4 x max_message_size (1 MiB) for each."""
    t = limited.new_test()
    message = b"Subject: blank\r\n\r\n"
    message += b"\r\n" * ((1_048_576 - len(message)) // 2)  # exactly up to max_message_size
    senders = []
    for _ in range(4):
        c = Client(limited.smtp_port)
        clients.append(c)
        assert c.reply()[0] == 220
        mail_to(c, t["addresses"]["do"])
        senders.append(c)
    before = peak_rss(limited)
    for c in senders:  # all four at once
        threading.Thread(target=c.send, args=(message + b".\r\n",), daemon=True).start()
    for c in senders:
        code, text = c.reply()  # once the server has read all of it
        assert code == 250, text
    grown = peak_rss(limited) - before
    assert grown < 4 * 4 * 1_048_576, f"peak memory grew by {grown / 2**20:.1f} MiB for 4 x 1 MiB"
    body = limited.wait_for(t["alias"], lambda b: len(b["probes"]["do"]["deliveries"]) == 4)
    assert body["probes"]["do"]["deliveries"][0]["size"] == len(message)


def test_data_line_too_long_gets_500_after_the_message_and_is_not_recorded(
    limited: Serve, clients: list[Client]
) -> None:
    """RFC 5321 §4.5.3.1.6: 1000 octets for a text line. aiosmtpd reads the message to its
    end, then answers 500; nothing is recorded and the session goes on."""
    t = limited.new_test()
    c = Client(limited.smtp_port)
    clients.append(c)
    assert c.reply()[0] == 220
    mail_to(c, t["addresses"]["do"])
    code, text = c.cmd(b"Subject: long\r\n\r\n" + b"y" * 1001 + b"\r\n.")
    assert code == 500 and b"Line too long" in text
    assert c.cmd("MAIL FROM:<a@limits.example>")[0] == 250
    assert c.cmd(f"RCPT TO:<{t['addresses']['dont']}>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    assert c.cmd(b"Subject: short\r\n\r\n" + b"y" * 998 + b"\r\n.")[0] == 250  # 1000 with CRLF: fine
    body = limited.wait_for(t["alias"], lambda b: b["probes"]["dont"]["deliveries"])
    assert body["probes"]["do"]["deliveries"] == []


def test_bare_lf_ends_a_command_line(limited: Serve, clients: list[Client]) -> None:
    """aiosmtpd reads commands up to LF: "NOOP\\n" is a command (lenient, and harmless here)."""
    c = Client(limited.smtp_port)
    clients.append(c)
    assert c.reply()[0] == 220
    c.send(b"NOOP\n")
    assert c.reply()[0] == 250


SMUGGLED_ENDINGS = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n"]


@pytest.mark.parametrize("ending", SMUGGLED_ENDINGS, ids=lambda e: repr(e)[2:-1])
def test_smtp_smuggling_endings_do_not_end_data(limited: Serve, clients: list[Client], ending: bytes) -> None:
    """SMTP smuggling (CVE-2023-51766 and kin): only CRLF . CRLF ends DATA in aiosmtpd, so a
    second message hidden behind a bare-LF or bare-CR "end" stays part of the first one's text:
    one 250, one delivery, and the smuggled MAIL/RCPT/DATA are never run as commands."""
    t = limited.new_test()
    a = t["addresses"]
    c = Client(limited.smtp_port)
    clients.append(c)
    assert c.reply()[0] == 220
    mail_to(c, a["do"])
    smuggled = (
        f"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<{a['dont']}>\r\nDATA\r\n"
        "Message-ID: <smuggled@attacker.example>\r\n\r\nsmuggled\r\n"
    ).encode()
    c.send(b"Message-ID: <first@limits.example>\r\n\r\nfirst" + ending + smuggled + b".\r\n")
    code, text = c.reply()
    assert code == 250 and text.endswith(b"recorded 1 deliveries")
    assert c.cmd("NOOP") == (250, b"OK")  # no replies to smuggled commands are waiting in the stream
    body = limited.wait_for(t["alias"], lambda b: b["probes"]["do"]["deliveries"])
    (d,) = body["probes"]["do"]["deliveries"]
    assert d["message_id"] == "<first@limits.example>"
    assert body["probes"]["dont"]["deliveries"] == []


# -- test creation ---------------------------------------------------------------------------------


def burst(url: str, n: int, source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """`n` POST /api/tests at once, each on its own connection from `source`, released together."""
    gate = threading.Barrier(n)
    out: list[httpx.Response] = []

    def one() -> None:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=WAIT) as http:
            http.get(url + "/static/style.css")  # connected before the barrier
            gate.wait()
            out.append(http.post(url + "/api/tests", headers=headers))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT * 2)
    assert len(out) == n
    return out


def test_rate_limit_holds_for_a_concurrent_burst(setup_dir: Path) -> None:
    server = started(setup_dir, LIMITS_TESTS_PER_MINUTE="5")
    try:
        got = burst(server.web, 40)
        assert sorted(r.status_code for r in got) == [201] * 5 + [429] * 35
        refused = next(r for r in got if r.status_code == 429)
        assert refused.headers["retry-after"] == "60" and refused.json()["error"]
        # X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
        spoofed = burst(server.web, 5, headers={"X-Forwarded-For": "192.0.2.1"})
        assert {r.status_code for r in spoofed} == {429}
    finally:
        server.stop()


def test_flood_from_one_address_cannot_remove_or_block_an_earlier_test_of_another(setup_dir: Path) -> None:
    server = started(setup_dir, LIMITS_TESTS_PER_MINUTE="5", RETENTION_MAX_TESTS="30")
    try:
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=WAIT) as victim:
            earlier = victim.post(server.web + "/api/tests").json()
        # One address floods: 5 tests, then 429 for everything else.
        flood = burst(server.web, 30, source="127.0.0.3")
        assert sorted(r.status_code for r in flood) == [201] * 5 + [429] * 25
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=WAIT) as victim:
            assert victim.post(server.web + "/api/tests").status_code == 201  # the victim is not blocked
        # Many addresses flood until the bound: creation is refused (503), nothing is evicted.
        codes = [r.status_code for i in range(6) for r in burst(server.web, 5, source=f"127.0.1.{i + 1}")]
        assert codes.count(201) == 30 - 7 and codes.count(503) == 7
        # The earlier test is still there, still takes mail, and shows it.
        a = earlier["addresses"]
        assert send(server.smtp_port, [a["do"], a["dont"]], sni="do.x.test") == {}
        body = server.wait_for(earlier["alias"], lambda b: b["probes"]["dont"]["deliveries"])
        assert body["probes"]["do"]["status"] == "delivered"
    finally:
        server.stop()
    # Pruning runs at start: the flood is younger than the retention, so nothing goes.
    again = started(setup_dir)
    try:
        assert again.result(earlier["alias"])["probes"]["do"]["status"] == "delivered"
        with db(again) as conn:
            assert conn.execute("SELECT count(*) FROM tests").fetchone()[0] == 30
    finally:
        again.stop()


def created_from(server: Serve, forwarded_for: list[str]) -> list[int]:
    """POST /api/tests once per address, each as a visitor behind the trusted proxy (127.0.0.1)."""
    with httpx.Client(timeout=WAIT) as http:
        return [http.post(server.web + "/api/tests", headers={"X-Forwarded-For": a}).status_code for a in forwarded_for]


def test_ipv6_clients_are_counted_per_64(setup_dir: Path) -> None:
    server = started(setup_dir, LIMITS_TESTS_PER_MINUTE="3", WEB_TRUSTED_PROXIES="127.0.0.1/32")
    try:
        # Rotating addresses inside one /64 (which one host commonly holds) is one client.
        assert created_from(server, [f"2001:db8:1:2::{i:x}" for i in range(1, 7)]) == [201] * 3 + [429] * 3
        assert created_from(server, ["2001:db8:1:2:ffff:ffff:ffff:ffff"]) == [429]
        assert created_from(server, ["2001:db8:1:3::1", "192.0.2.1", "192.0.2.2"]) == [201] * 3
    finally:
        server.stop()


def test_creation_has_a_global_rate_whatever_the_addresses(setup_dir: Path) -> None:
    server = started(setup_dir, LIMITS_TESTS_PER_MINUTE_TOTAL="6", WEB_TRUSTED_PROXIES="127.0.0.1/32")
    try:
        codes = created_from(server, [f"198.51.100.{i}" for i in range(1, 11)])
        assert codes == [201] * 6 + [503] * 4
        with httpx.Client(timeout=WAIT) as http:
            r = http.post(server.web + "/api/tests", headers={"X-Forwarded-For": "198.51.100.99"})
        assert r.status_code == 503 and r.headers["retry-after"] and "many tests" in r.json()["error"]
    finally:
        server.stop()


def test_a_full_store_reclaims_old_tests_that_never_received_anything(setup_dir: Path) -> None:
    now = time.time()
    with sqlite3.connect(setup_dir.parent / "havedane.sqlite3") as conn:
        conn.execute("INSERT INTO tests VALUES ('unused0000000000', ?, '192.0.2.1')", (now - 2 * 3600,))
        conn.execute("INSERT INTO tests VALUES ('mailed0000000000', ?, '192.0.2.1')", (now - 3 * 3600,))
        conn.execute(
            "INSERT INTO deliveries (alias, probe, received_at, client_ip, mail_from, rcpt, size)"
            " VALUES ('mailed0000000000', 'do', ?, '192.0.2.25', '', 'test@mailed0000000000.do.x.test', 10)",
            (now - 3 * 3600 + 5,),
        )
    server = started(setup_dir, RETENTION_MAX_TESTS="2", RETENTION_RECLAIM_AFTER="3600")
    try:
        assert server.request("POST", "/api/tests")[0] == 201  # in place of the unused one
        assert server.request("GET", "/api/tests/unused0000000000")[0] == 404
        status, body, headers = server.request("POST", "/api/tests")  # the new one is too young to go
        assert status == 503 and headers["retry-after"]
        assert server.result("mailed0000000000")["probes"]["do"]["status"] == "delivered"
    finally:
        server.stop()


# -- retention ---------------------------------------------------------------------------------------

DAY = 86400.0


def test_retention_prunes_by_age_and_never_a_younger_test(setup_dir: Path) -> None:
    """Pruning runs when `havedane serve` starts, then every 10 minutes."""
    now = time.time()
    ages = {"old0000000000000": 7.5 * DAY, "young00000000000": 6.9 * DAY, "new0000000000000": 0.0}
    with sqlite3.connect(setup_dir.parent / "havedane.sqlite3") as conn:
        for alias, age in ages.items():
            conn.execute("INSERT INTO tests VALUES (?, ?, '192.0.2.1')", (alias, now - age))
            conn.execute(
                "INSERT INTO deliveries (alias, probe, received_at, client_ip, mail_from, rcpt, size)"
                " VALUES (?, 'do', ?, '192.0.2.25', '', ?, 10)",
                (alias, now - age + 5, f"test@{alias}.do.x.test"),
            )
        sessions: list[tuple[str, str | None, float]] = [
            ("s-old", "old0000000000000", 7.5 * DAY),
            ("s-young", "young00000000000", 6.9 * DAY),
            ("orphan-old", None, 1.5 * DAY),  # no test: kept one day at most
            ("orphan-new", None, 0.5 * DAY),
        ]
        for sid, owner, age in sessions:
            conn.execute(
                "INSERT INTO sessions (id, started, client_ip, client_port, local_ip, local_port, starttls, rcpts,"
                " alias, outcome) VALUES (?, ?, '192.0.2.25', 1, '127.0.0.1', 25, 0, '[]', ?, 'left')",
                (sid, now - age, owner),
            )
    server = started(setup_dir)  # [retention] days = 7 (the default)
    try:
        eventually(lambda: server.request("GET", "/api/tests/old0000000000000")[0] == 404, "the old test pruned")
        for alias in ("young00000000000", "new0000000000000"):
            assert len(server.result(alias)["probes"]["do"]["deliveries"]) == 1
        with db(server) as conn:
            assert {r[0] for r in conn.execute("SELECT alias FROM tests")} == {"young00000000000", "new0000000000000"}
            assert {r[0] for r in conn.execute("SELECT DISTINCT alias FROM deliveries")} == {
                "young00000000000",
                "new0000000000000",
            }
            assert {r[0] for r in conn.execute("SELECT id FROM sessions")} == {"s-young", "orphan-new"}
        # A test past its retention takes no more mail even before the pruner comes by (it
        # runs at start, so this one is written after that; a test never changes, so the
        # store may cache one it has read: this one is new to it).
        with db(server) as conn:
            conn.execute("INSERT INTO tests VALUES ('aged000000000000', ?, '192.0.2.1')", (now - 7.1 * DAY,))
        refused = send(server.smtp_port, ["test@aged000000000000.do.x.test", "test@new0000000000000.do.x.test"])
        assert refused["test@aged000000000000.do.x.test"][0] == 550
    finally:
        server.stop()


# -- what every response carries, what is never stored -------------------------------------------------

HEADERS = {
    "content-security-policy": "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def test_security_headers_on_every_kind_of_response(limited: Serve) -> None:
    alias = limited.new_test()["alias"]
    requests = [
        ("GET", "/", 200),  # HTML
        ("GET", f"/t/{alias}", 200),
        ("GET", f"/t/{alias}?fragment=1", 200),
        ("GET", f"/api/tests/{alias}", 200),  # JSON
        ("POST", "/api/tests", 201),
        ("POST", "/new", 303),  # redirect
        ("GET", "/static/app.js", 200),  # static
        ("GET", "/static/style.css", 200),
        ("GET", "/static/nosuchfile.js", 404),  # errors, HTML and JSON
        ("GET", "/t/nosuchtest0000000", 404),
        ("GET", "/nowhere", 404),
        ("GET", "/api/tests/nosuchtest0000000", 404),
        ("DELETE", f"/api/tests/{alias}", 405),
        ("POST", "/", 405),
    ]
    with httpx.Client(base_url=limited.web, timeout=WAIT) as http:
        for method, path, status in requests:
            r = http.request(method, path)
            assert r.status_code == status, (method, path, r.status_code)
            for name, value in HEADERS.items():
                assert value in r.headers.get(name, ""), (method, path, name)
        with http.stream("GET", f"/api/tests/{alias}/events") as r:  # SSE
            assert r.status_code == 200
            for name, value in HEADERS.items():
                assert value in r.headers.get(name, ""), ("events", name)
        for _ in range(10):  # 429 (the default limit is 10 a minute)
            r = http.post("/api/tests")
        assert r.status_code == 429 and all(v in r.headers.get(k, "") for k, v in HEADERS.items())


def test_no_message_body_is_stored_only_the_message_id(limited: Serve) -> None:
    t = limited.new_test()
    marker = "body-marker-" + t["alias"]
    message = (
        f"Subject: subject-{marker}\r\nMessage-ID: <id-{t['alias']}@limits.example>\r\n"
        f"X-Private: header-{marker}\r\n\r\n" + f"text-{marker}\r\n" * 200
    ).encode()
    assert send(limited.smtp_port, [t["addresses"]["do"]], body=message) == {}
    body = limited.wait_for(t["alias"], lambda b: b["probes"]["do"]["deliveries"])
    assert body["probes"]["do"]["deliveries"][0]["message_id"] == f"<id-{t['alias']}@limits.example>"
    limited.stop()  # checkpoints the WAL: everything is in the one file
    stored = b"".join(p.read_bytes() for p in limited.config.parent.glob("havedane.sqlite3*"))
    assert f"id-{t['alias']}".encode() in stored
    assert marker.encode() not in stored
    assert marker not in "".join(limited.output)  # nor in the log

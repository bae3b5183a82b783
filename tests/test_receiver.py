"""The receiver over real sockets and real TLS, through `havedane serve` in this process (a
real process where the point is SIGTERM)."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest

from helpers import Serve, insecure_context, send, smtp, starttls_socket
from inprocess import InProcess


def test_three_probes_delivered_over_starttls(serve: InProcess) -> None:
    t = serve.new_test()
    a = t["addresses"]
    refused = send(serve.smtp_port, [a["do"], a["dont"], a["wrong"]], sni="do.x.test", helo="mail.sender.example")
    assert refused == {}
    body = serve.wait_for(t["alias"], lambda b: all(p["deliveries"] for p in b["probes"].values()))
    for name in ("do", "dont", "wrong"):
        (d,) = body["probes"][name]["deliveries"]
        assert d["client_ip"] == "127.0.0.1"
        assert d["helo"] == "mail.sender.example"
        assert d["mail_from"] == "postmaster@sender.example"
        assert d["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
        assert d["tls"]["cipher"]
        assert d["tls"]["sni"] == "do.x.test"
        assert d["received_at"].endswith("Z")
    assert body["verdict"]["code"] == "does-not-validate"
    assert "wrong.x.test" in body["verdict"]["summary"]


def test_unknown_alias_gets_550_5_1_1_and_no_delivery(serve: InProcess) -> None:
    t = serve.new_test()
    with smtp(serve.smtp_port) as c:
        c.mail("a@sender.example")
        code, msg = c.rcpt("test@nosuchalias000000.do.x.test")
        assert code == 550 and msg.startswith(b"5.1.1")
        code, msg = c.rcpt(t["addresses"]["do"].upper())  # host names are case-insensitive (RFC 4343)
        assert code == 250
        c.rset()
    assert serve.result(t["alias"])["probes"]["do"]["deliveries"] == []


def test_any_local_part_reaches_the_test_named_by_the_host(serve: InProcess) -> None:
    """The alias is the host's first label (<alias>.<probe>.<domain>); the local part is free."""
    t = serve.new_test()
    assert t["addresses"]["do"] == f"test@{t['alias']}.do.x.test"
    host = f"{t['alias']}.do.x.test"
    # Two local parts of one host in one message: one delivery (one per probe of a test).
    assert send(serve.smtp_port, [f"postmaster@{host}", f"Someone.Else@{host.upper()}"]) == {}
    # The delivery is stored before its 250, the session when the connection has ended.
    body = serve.wait_for(t["alias"], lambda b: b["probes"]["do"]["deliveries"] and b["probes"]["do"]["sessions"])
    (d,) = body["probes"]["do"]["deliveries"]
    assert d["rcpt"] == f"postmaster@{host}" and d["tied_by"] == "rcpt"
    (s,) = body["probes"]["do"]["sessions"]
    assert s["tied_by"] == "rcpt" and s["correlated_by_client_ip"] is False


def test_foreign_domain_is_never_relayed(serve: InProcess) -> None:
    t = serve.new_test()
    alias = t["alias"]
    with smtp(serve.smtp_port) as c:
        c.mail("a@sender.example")
        # Not a test's host: another domain, the base domain, a probe's own name, two labels
        # below a probe, a probe the deployment does not serve, an alias outside [a-z0-9].
        for rcpt in (f"{alias}@gmail.com", f"{alias}@x.test", f"{alias}@do.x.test", f"test@evil.{alias}.do.x.test",
                     f"test@{alias}.ee.x.test", f"test@{alias}.do.x.test.evil", "test@a_b.do.x.test"):  # fmt: skip
            code, msg = c.rcpt(rcpt)
            assert code == 550 and msg.startswith(b"5.7.1"), (rcpt, msg)
        with pytest.raises(smtplib.SMTPResponseException) as e:
            c.data(b"x")
        assert e.value.smtp_code == 503
    assert all(p["deliveries"] == [] for p in serve.result(t["alias"])["probes"].values())


def test_oversize_message_gets_552_and_no_delivery(setup_dir: Path) -> None:
    server = InProcess(setup_dir, env={"HAVEDANE_SMTP_MAX_MESSAGE_SIZE": "10000"}).start()
    try:
        t = server.new_test()
        rcpt = t["addresses"]["do"]
        big = b"Subject: big\r\n\r\n" + (b"y" * 990 + b"\r\n") * 20
        assert send(server.smtp_port, [rcpt]) == {}
        # Declared with SIZE (RFC 1870): refused at MAIL.
        with pytest.raises(smtplib.SMTPSenderRefused) as declared:
            send(server.smtp_port, [rcpt], body=big)
        assert declared.value.smtp_code == 552
        # Not declared: refused at the end of DATA, after reading it all.
        with smtp(server.smtp_port) as c:
            assert c.docmd("MAIL FROM:<a@sender.example>")[0] == 250
            assert c.docmd(f"RCPT TO:<{rcpt}>")[0] == 250
            assert c.docmd("DATA")[0] == 354
            c.send(big + b".\r\n")
            code, _ = c.getreply()
            assert code == 552
        time.sleep(0.2)
        deliveries = server.result(t["alias"])["probes"]["do"]["deliveries"]
        assert len(deliveries) == 1  # the small one only
    finally:
        server.stop()


def test_refusal_tls_then_quit_is_recorded_and_tied_by_sni(serve: InProcess) -> None:
    """What a DANE-validating Postfix does at `wrong`: TLS with SNI = the test's host there,
    then QUIT, no MAIL. The SNI ties it to the test, not the client address."""
    t = serve.new_test()
    wrong_host = f"{t['alias']}.wrong.x.test"
    with smtp(serve.smtp_port, sni=wrong_host.upper()) as c:
        c.quit()
    send(serve.smtp_port, [t["addresses"]["do"]], sni=f"{t['alias']}.do.x.test")
    send(serve.smtp_port, [t["addresses"]["dont"]], sni=None)
    body = serve.wait_for(t["alias"], lambda b: b["verdict"]["code"] == "validates")
    wrong = body["probes"]["wrong"]
    assert wrong["status"] == "refused"
    (s,) = wrong["sessions"]
    assert s["tls"]["sni"] == wrong_host.upper()
    assert s["mail_from"] is None
    assert s["outcome"] == "tls-then-left"
    assert (s["tied_by"], s["correlated_by_client_ip"], s["competing_tests"]) == ("sni", False, 0)
    assert "SNI" in body["verdict"]["summary"] and "client address" not in body["verdict"]["summary"]


def test_two_tests_from_one_address_each_get_only_their_own_refusal(serve: InProcess) -> None:
    """One outbound platform, two tests at the same time: by address the refusal at `wrong`
    could be either's; by SNI each test gets its own, and only its own."""
    tests = [serve.new_test(), serve.new_test()]
    for t in tests:
        with smtp(serve.smtp_port, sni=f"{t['alias']}.wrong.x.test") as c:
            c.quit()
    for t in tests:
        send(serve.smtp_port, [t["addresses"]["do"], t["addresses"]["dont"]], sni=f"{t['alias']}.do.x.test")
    for t in tests:
        body = serve.wait_for(t["alias"], lambda b: b["verdict"]["code"] == "validates")
        (s,) = body["probes"]["wrong"]["sessions"]
        assert s["tls"]["sni"] == f"{t['alias']}.wrong.x.test"
        assert (s["tied_by"], s["competing_tests"]) == ("sni", 0)


def test_refusal_naming_no_test_falls_back_to_the_client_address(serve: InProcess) -> None:
    """SNI at a probe, but of no test (or no SNI that names one): tied by the address that
    delivered the test's other probes, and the API says so."""
    t = serve.new_test()
    with smtp(serve.smtp_port, sni="nosuchtest000000.wrong.x.test") as c:
        c.quit()
    send(serve.smtp_port, [t["addresses"]["do"], t["addresses"]["dont"]], sni=f"{t['alias']}.do.x.test")
    body = serve.wait_for(t["alias"], lambda b: b["verdict"]["code"] == "validates")
    (s,) = body["probes"]["wrong"]["sessions"]
    assert (s["tied_by"], s["correlated_by_client_ip"]) == ("address", True)
    assert "127.0.0.1" in body["verdict"]["summary"] and "client address" in body["verdict"]["summary"]


def test_refusal_by_closing_without_quit(serve: InProcess) -> None:
    t = serve.new_test()
    raw = starttls_socket(serve.smtp_port, "closer.example")
    tls = insecure_context().wrap_socket(raw, server_hostname=f"{t['alias']}.wrong.x.test")
    tls.close()
    send(serve.smtp_port, [t["addresses"]["do"], t["addresses"]["dont"]], sni="do.x.test")
    body = serve.wait_for(t["alias"], lambda b: b["probes"]["wrong"]["status"] == "refused")
    assert body["probes"]["wrong"]["sessions"][0]["helo"] == "closer.example"


def test_handshake_aborted_by_the_client_is_recorded(serve: InProcess) -> None:
    """A client that verifies inside the handshake sends a fatal alert (bad certificate):
    the session never completes TLS, and is tied to its test by the SNI it sent."""
    t = serve.new_test()
    raw = starttls_socket(serve.smtp_port, "strict.example")
    strict = ssl.create_default_context()  # verifies: our CA is unknown to it
    with pytest.raises(ssl.SSLCertVerificationError):
        strict.wrap_socket(raw, server_hostname=f"{t['alias']}.wrong.x.test")
    raw.close()
    body = serve.wait_for(t["alias"], lambda b: b["probes"]["wrong"]["status"] == "refused")
    (s,) = body["probes"]["wrong"]["sessions"]
    assert s["outcome"] == "handshake-failed"
    assert s["tls"] is None and s["tied_by"] == "sni"
    # and the receiver still serves the next client
    assert send(serve.smtp_port, [t["addresses"]["wrong"]]) == {}


def test_plaintext_delivery_to_do_is_no_tls(serve: InProcess) -> None:
    t = serve.new_test()
    a = t["addresses"]
    send(serve.smtp_port, [a["do"], a["dont"], a["wrong"]], tls=False)
    body = serve.wait_for(t["alias"], lambda b: b["verdict"]["code"] != "pending")
    assert body["verdict"]["code"] == "no-tls"
    assert body["probes"]["do"]["deliveries"][0]["tls"] is None


def test_grace_period_turns_missing_wrong_into_validates(serve: InProcess) -> None:
    t = serve.new_test()
    a = t["addresses"]
    send(serve.smtp_port, [a["do"], a["dont"]], sni="do.x.test")
    assert serve.result(t["alias"])["verdict"]["code"] == "pending"
    body = serve.wait_for(t["alias"], lambda b: b["verdict"]["code"] != "pending", timeout=6)
    assert body["verdict"]["code"] == "validates"
    assert body["probes"]["wrong"]["status"] == "not-delivered"


def test_malformed_commands_get_smtp_errors_and_the_session_goes_on(serve: InProcess) -> None:
    with smtp(serve.smtp_port, tls=False) as c:
        assert c.docmd("MAIL FROM:<broken")[0] == 553
        assert c.docmd("RCPT TO:<a@do.x.test>")[0] == 503
        assert c.docmd("BOGUS")[0] == 500
        assert c.docmd("DATA")[0] == 503
        assert c.docmd("STARTTLS extra")[0] == 501
        assert c.noop()[0] == 250


def test_sigterm_stops_cleanly(serve_process: Serve) -> None:
    assert serve_process.stop() == 0
    assert "Traceback" not in "".join(serve_process.output)


def test_proxy_protocol_names_the_client(setup_dir: Path) -> None:
    """Behind a TCP load balancer: the PROXY v1 header (not the balancer) is the client."""
    server = InProcess(setup_dir, env={"HAVEDANE_SMTP_PROXY_PROTOCOL": "true"}).start()
    try:
        t = server.new_test()
        with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10) as raw:
            raw.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n")
            f = raw.makefile("rb")
            assert f.readline().startswith(b"220")
            rcpt = f"RCPT TO:<{t['addresses']['do']}>".encode()
            for line in (b"EHLO lb.example", b"MAIL FROM:<a@sender.example>", rcpt, b"DATA"):
                raw.sendall(line + b"\r\n")
                while (reply := f.readline())[3:4] == b"-":
                    pass
                assert reply[:1] in (b"2", b"3"), reply
            raw.sendall(b"Subject: x\r\n\r\nx\r\n.\r\nQUIT\r\n")
            assert f.readline().startswith(b"250")
        body = server.wait_for(t["alias"], lambda b: b["probes"]["do"]["deliveries"])
        assert body["probes"]["do"]["deliveries"][0]["client_ip"] == "203.0.113.9"
        # Without a PROXY header the connection is dropped, not served as the balancer.
        with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10) as raw:
            raw.sendall(b"EHLO direct.example\r\n")
            assert raw.recv(100) == b""
    finally:
        server.stop()


def test_sigterm_says_421_and_saves_open_sessions(serve_process: Serve, setup_dir: Path) -> None:
    """An SMTP session still open at shutdown is told (421) and still recorded."""
    import sqlite3

    serve = serve_process
    client = smtp(serve.smtp_port, sni="wrong.x.test", helo="still-open.example")  # no test's host
    assert serve.stop() == 0
    assert client.noop()[0] == 421  # the shutdown notice, read as the reply to the next command
    db = sqlite3.connect(setup_dir.parent / "havedane.sqlite3")
    rows = db.execute("SELECT helo, sni, outcome FROM sessions WHERE helo = 'still-open.example'").fetchall()
    # Recorded, and not as a refusal: the server ended it.
    assert rows == [("still-open.example", "wrong.x.test", "server-shutdown")]


def test_sessions_tied_by_sni_count_toward_the_tests_limit(setup_dir: Path) -> None:
    """A refusal tied by SNI is stored under the test like one tied by RCPT, so it counts
    toward `[smtp] max_sessions_per_test`; beyond it, it is stored tied to no test."""
    server = Serve(setup_dir, env={"HAVEDANE_SMTP_MAX_SESSIONS_PER_TEST": "2"}).start()
    try:
        t = server.new_test()
        for _ in range(3):
            with smtp(server.smtp_port, sni=f"{t['alias']}.wrong.x.test") as c:
                c.quit()
        body = server.wait_for(t["alias"], lambda b: len(b["probes"]["wrong"]["sessions"]) == 2)
        time.sleep(0.5)  # the third session is saved too, but not under this test
        body = server.result(t["alias"])
        assert [s["tied_by"] for s in body["probes"]["wrong"]["sessions"]] == ["sni", "sni"]
        assert body["sessions_total"] == 2
    finally:
        server.stop()

"""The conformance probes at the receiver: chains by SNI, listeners without STARTTLS."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from helpers import Serve, free_port, insecure_context, send, starttls_socket
from inprocess import InProcess

NOTLS = "127.0.0.28"
UNUSABLE_NOTLS = "127.0.0.29"
TA_NOTLS = "127.0.0.27"


@pytest.fixture
def matrix(setup_dir: Path) -> Iterator[InProcess]:
    env = {
        "HAVEDANE_PROBES_MATRIX": "true",
        "HAVEDANE_PROBES_ADDRESSES": f"notls={NOTLS},unusable-notls={UNUSABLE_NOTLS},ta-notls={TA_NOTLS}",
        "HAVEDANE_VERDICT_GRACE": "2",
    }
    server = InProcess(setup_dir, env=env, smtp_port=free_port()).start()  # one port on every address
    yield server
    assert server.stop() == 0


def served_chain(port: int, sni: str | None) -> list[x509.Certificate]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c._host = sni  # type: ignore[attr-defined]  # smtplib sends this as SNI
        c.starttls(context=insecure_context())
        sock = c.sock
        assert isinstance(sock, ssl.SSLSocket)
        chain = sock._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
        return [x509.load_der_x509_certificate(cert.public_bytes(ssl._ssl.ENCODING_DER)) for cert in chain]  # type: ignore[attr-defined]


def names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_chain_is_chosen_by_sni(matrix: InProcess, setup_dir: Path) -> None:
    default = served_chain(matrix.smtp_port, None)
    # Every test's host at a probe: the wildcard name; the probes with chains of their own left out.
    assert "*.do.x.test" in names(default[0]) and "*.ta.x.test" in names(default[0])
    assert not {"*.ee.x.test", "*.ta-badname.x.test", "*.ta-rogue.x.test"} & set(names(default[0]))
    # A probe's chain is served for SNI naming any test's host there, in any case.
    ee = served_chain(matrix.smtp_port, "abc123.EE.x.test")
    assert len(ee) == 1 and ee[0].issuer == ee[0].subject and names(ee[0]) == ["elsewhere.invalid"]
    assert ee[0].not_valid_after_utc.year < 2026 or ee[0].not_valid_after_utc < default[0].not_valid_before_utc
    badname = served_chain(matrix.smtp_port, "abc123.ta-badname.x.test")
    assert names(badname[0]) == ["elsewhere.x.test"] and badname[1] == default[1]
    rogue = served_chain(matrix.smtp_port, "abc123.ta-rogue.x.test")
    assert len(rogue) == 3 and rogue[2] == default[1] and rogue[0].issuer == rogue[1].subject != default[1].subject
    mx = served_chain(matrix.smtp_port, "mxhost.x.test")
    assert "mxhost.x.test" in names(mx[0])
    # Not a test's host: the probe's own name, two labels below it.
    for sni in ("ee.x.test", "a.b.ee.x.test"):
        assert names(served_chain(matrix.smtp_port, sni)[0]) == names(default[0]), sni


def test_ta_full_serves_the_leaf_without_the_ca(matrix: InProcess, setup_dir: Path) -> None:
    # RFC 7671 §5.2.2: with the CA's full key in DNS (2 1 0) the server may omit the CA;
    # ta-full's does, for every test's host, and the leaf is one our CA issued.
    ca = x509.load_pem_x509_certificate((setup_dir.parent / "tls" / "ca.pem").read_bytes())
    full = served_chain(matrix.smtp_port, "abc123.ta-full.x.test")
    assert len(full) == 1 and names(full[0]) == ["*.ta-full.x.test"] and full[0].issuer == ca.subject
    # The probes whose records match our default chain still get leaf + CA.
    for sni in ("abc123.mixed-ee.x.test", "abc123.mixed-ta.x.test"):
        chain = served_chain(matrix.smtp_port, sni)
        assert len(chain) == 2 and chain[1] == ca and names(chain[0]) == names(served_chain(matrix.smtp_port, None)[0])


def test_probe_addresses_offer_no_starttls(matrix: InProcess) -> None:
    t = matrix.new_test()
    for address in (NOTLS, UNUSABLE_NOTLS, TA_NOTLS):
        with smtplib.SMTP(address, matrix.smtp_port, timeout=10) as c:
            c.ehlo("sender.example")
            assert not c.has_extn("starttls")
            assert c.docmd("STARTTLS")[0] in (454, 502)
    # A validating sender: EHLO, sees no STARTTLS, leaves (Postfix: 4.7.4 TLS required).
    with socket.create_connection((NOTLS, matrix.smtp_port)) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO dane.sender.example\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"QUIT\r\n")
        f.readline()
    # A plain sender delivers in cleartext to unusable-notls.
    with smtplib.SMTP(UNUSABLE_NOTLS, matrix.smtp_port, timeout=10) as c:
        c.sendmail("a@sender.example", [t["addresses"]["unusable-notls"]], b"Subject: x\r\n\r\nx\r\n")
    send(matrix.smtp_port, [t["addresses"]["do"], t["addresses"]["dont"]], sni="do.x.test")
    body = matrix.wait_for(t["alias"], lambda b: b["probes"]["notls"]["status"] == "refused")
    assert body["probes"]["notls"]["grade"]["grade"] == "pass"
    # Where no STARTTLS is offered there is no certificate to check: the API says what to do there.
    for name in ("notls", "ta-notls"):
        assert body["probes"][name]["expected"] == "connect, find no STARTTLS, and refuse to send"
    assert body["probes"]["wrong"]["expected"].startswith("connect, check our certificate against the TLSA")
    assert body["probes"]["unusable-notls"]["grade"]["grade"] == "fail"
    assert body["probes"]["unusable-notls"]["deliveries"][0]["tls"] is None
    assert "Conforms on" in body["conformance"]


def test_sessions_record_the_chain_and_grades_follow_sni(matrix: InProcess) -> None:
    t = matrix.new_test()
    a = t["addresses"]
    send(matrix.smtp_port, [a["do"], a["dont"]], sni="do.x.test")
    rogue_host = f"{t['alias']}.ta-rogue.x.test"
    send(matrix.smtp_port, [a["ta-rogue"]], sni=rogue_host)  # a non-validating sender with SNI
    send(matrix.smtp_port, [a["ta-badname"]], sni=None)  # ... and one without SNI
    body = matrix.wait_for(t["alias"], lambda b: len(b["probes"]["ta-badname"]["sessions"]) == 1)
    assert body["probes"]["ta-rogue"]["grade"]["grade"] == "fail"
    assert body["probes"]["ta-badname"]["grade"]["grade"] == "inconclusive"
    assert "SNI" in body["probes"]["ta-badname"]["grade"]["reason"]
    sessions = {s["probe"]: s for p in body["probes"].values() for s in p["sessions"]}
    assert sessions["ta-rogue"]["tls"]["sni"] == rogue_host


def test_matrix_without_addresses_is_a_config_error(setup_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="probes.addresses"):
        Serve(setup_dir, env={"HAVEDANE_PROBES_MATRIX": "true"}).start(timeout=10)


def refuse_after_tls(port: int, sni: str) -> None:
    """What Postfix does when our certificate fails its DANE check: it sends its TLS
    Finished, QUIT and close_notify in one go, and closes."""
    ctx = insecure_context()
    with starttls_socket(port, "dane.sender.example") as s:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                s.sendall(outgoing.read())
                incoming.write(s.recv(65536))
        tls.write(b"QUIT\r\n")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # close_notify, without waiting for the server's
        s.sendall(outgoing.read())


def test_refusal_right_after_the_handshake_is_recorded(matrix: InProcess) -> None:
    # aiosmtpd cancels the STARTTLS command on the close_notify that comes with the
    # handshake's last flight; the session must still show the TLS and the SNI.
    t = matrix.new_test()
    host = f"{t['alias']}.ta-badname.x.test"
    for _ in range(3):
        refuse_after_tls(matrix.smtp_port, host)
    # After the refusals: they are tied to the test from shortly before its first delivery
    # to the end of the grace period (2 s here), a bound a slow machine could pass after it.
    send(matrix.smtp_port, [t["addresses"]["do"]], sni="do.x.test")
    body = matrix.wait_for(t["alias"], lambda b: len(b["probes"]["ta-badname"]["sessions"]) == 3)
    for s in body["probes"]["ta-badname"]["sessions"]:
        assert s["outcome"] == "tls-then-left" and s["starttls"], s
        assert s["tls"] is not None and s["tls"]["sni"] == host and s["tied_by"] == "sni", s
    assert body["probes"]["ta-badname"]["status"] == "refused"
    assert body["probes"]["ta-badname"]["grade"] == {"grade": "pass", "reason": "connected and refused to deliver"}


def test_mx_fallback_sessions_say_which_mx_host_and_the_page_says_what_to_do(matrix: Serve) -> None:
    """mx-fallback: the receiver tells its two MX hosts apart by SNI. A delivery that names
    mxfail (the host a DANE sender must skip) fails; so does delivering to denial-bogus.
    The page's advice then speaks to each (issue 15)."""
    t = matrix.new_test()
    a = t["addresses"]
    send(matrix.smtp_port, [a["do"]], sni="do.x.test")
    send(matrix.smtp_port, [a["mx-fallback"]], sni="mxfail.x.test")
    send(matrix.smtp_port, [a["denial-bogus"]], sni=None)
    body = matrix.wait_for(t["alias"], lambda b: b["probes"]["mx-fallback"]["deliveries"])
    fallback = body["probes"]["mx-fallback"]
    assert [d["tls"]["sni"] for d in fallback["deliveries"]] == ["mxfail.x.test"]
    assert [s["probe"] for s in fallback["sessions"]] == ["mx-fallback"]
    assert fallback["grade"] == {"grade": "fail", "reason": fallback["grade"]["reason"]}
    assert "through mxfail.x.test" in fallback["grade"]["reason"]
    assert body["probes"]["denial-bogus"]["grade"]["grade"] == "fail"
    with urllib.request.urlopen(f"{matrix.web}/t/{t['alias']}", timeout=10) as resp:
        page = resp.read().decode()
    assert 'id="advice-mx-fallback"' in page and "smtp_mx_address_limit" in page
    assert 'id="advice-denial-bogus"' in page and "validating resolver" in page
    assert 'id="advice-do"' not in page and 'id="advice-ta-rogue"' not in page

"""What a TLS handshake proves about the sender, over real sockets and real handshakes.

Only what the sender did after it was shown our certificate is a refusal; a handshake
that failed before (no shared cipher, an HTTP request) is ours and no evidence.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import sqlite3
import ssl
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from helpers import Serve, insecure_context, send, starttls_socket

MATRIX_ENV = {
    "HAVEDANE_PROBES_MATRIX": "true",
    "HAVEDANE_PROBES_ADDRESSES": "notls=127.0.0.28,unusable-notls=127.0.0.29",
    "HAVEDANE_VERDICT_GRACE": "2",
}


@pytest.fixture
def matrix(setup_dir: Path) -> Iterator[Serve]:
    server = Serve(setup_dir, env=MATRIX_ENV).start()
    yield server
    server.stop()


def rsa_only_tls12() -> ssl.SSLContext:
    """A sender that can only verify RSA signatures (TLS 1.2, RSA-authenticated suites)."""
    ctx = insecure_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("aRSA")
    return ctx


def chain_of(sock: ssl.SSLSocket) -> list[x509.Certificate]:
    chain = sock._sslobj.get_unverified_chain()  # type: ignore[attr-defined]  # public in 3.13
    return [x509.load_der_x509_certificate(c.public_bytes(ssl._ssl.ENCODING_DER)) for c in chain]  # type: ignore[attr-defined]


def deliver_with(port: int, ctx: ssl.SSLContext, sni: str, rcpt: str) -> list[x509.Certificate]:
    """STARTTLS with `ctx` and `sni`, deliver to `rcpt`; the chain the client was shown."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="rsa.sender.example", timeout=10) as c:
        c._host = sni  # type: ignore[assignment]  # smtplib sends this as SNI
        c.starttls(context=ctx)
        assert isinstance(c.sock, ssl.SSLSocket)
        chain = chain_of(c.sock)
        c.sendmail("a@sender.example", [rcpt], b"Subject: x\r\n\r\nx\r\n")
    return chain


def names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def sessions_of(body: dict[str, Any], probe: str) -> list[dict[str, Any]]:
    return list(body["probes"][probe]["sessions"])


def chain_served(setup_dir: Path, session_id: str) -> str | None:
    """The chain the receiver recorded for a session (kept in the store, not in the API)."""
    with contextlib.closing(sqlite3.connect(setup_dir.parent / "havedane.sqlite3")) as db:
        row = db.execute("SELECT chain FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return row[0] if row else None


def test_rsa_only_sender_is_shown_each_probes_rsa_chain(matrix: Serve, setup_dir: Path) -> None:
    """Issue 11: an RSA-only TLS 1.2 sender at ta-rogue and ee gets the probe's own chain
    (with an RSA leaf), its sessions are recorded with TLS and graded on that chain."""
    t = matrix.new_test()
    a = t["addresses"]
    send(matrix.smtp_port, [a["do"], a["dont"]], sni="do.x.test")
    rogue = deliver_with(matrix.smtp_port, rsa_only_tls12(), f"{t['alias']}.ta-rogue.x.test", a["ta-rogue"])
    assert isinstance(rogue[0].public_key(), rsa.RSAPublicKey)
    assert names(rogue[0]) == ["*.ta-rogue.x.test"] and len(rogue) == 3
    assert rogue[0].issuer == rogue[1].subject != rogue[2].subject  # the unrelated CA, then ours
    ee = deliver_with(matrix.smtp_port, rsa_only_tls12(), f"{t['alias']}.ee.x.test", a["ee"])
    assert isinstance(ee[0].public_key(), rsa.RSAPublicKey)
    assert len(ee) == 1 and ee[0].issuer == ee[0].subject and names(ee[0]) == ["elsewhere.invalid"]
    body = matrix.wait_for(t["alias"], lambda b: all(sessions_of(b, p) for p in ("ta-rogue", "ee")))
    for probe, sni in (("ta-rogue", f"{t['alias']}.ta-rogue.x.test"), ("ee", f"{t['alias']}.ee.x.test")):
        (d,) = body["probes"][probe]["deliveries"]
        assert d["tls"] is not None and d["tls"]["version"] == "TLSv1.2" and d["tls"]["sni"] == sni
        assert "RSA" in d["tls"]["cipher"]
        (s,) = sessions_of(body, probe)
        assert s["outcome"] == "delivered" and s["tls"] is not None
        assert chain_served(setup_dir, s["id"]) == probe.removeprefix("ta-")
    assert body["probes"]["ta-rogue"]["grade"]["grade"] == "fail"  # it delivered where it must refuse
    assert body["probes"]["ee"]["grade"]["grade"] == "pass"


def test_handshake_failed_on_our_side_is_no_evidence(setup_dir: Path) -> None:
    """A setup whose probe chains are ECDSA only (made before RSA siblings existed) cannot
    complete TLS with an RSA-only sender: that failure is ours, never a pass at a
    must-refuse probe nor a fail at a must-deliver one."""
    tls_dir = setup_dir.parent / "tls"
    for path in tls_dir.glob("*-rsa.*"):
        if path.name.split("-")[1] in ("ee", "rogue"):
            path.unlink()
    server = Serve(setup_dir, env=MATRIX_ENV).start()
    try:
        t = server.new_test()
        a = t["addresses"]
        send(server.smtp_port, [a["do"], a["dont"]], sni="do.x.test")
        for probe in ("ta-rogue", "ee"):
            with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected)):
                deliver_with(server.smtp_port, rsa_only_tls12(), f"{t['alias']}.{probe}.x.test", a[probe])
        probes = ("ta-rogue", "ee")
        done = lambda b: b["verdict"]["code"] != "pending" and all(sessions_of(b, p) for p in probes)  # noqa: E731
        body = server.wait_for(t["alias"], done)
        for probe in ("ta-rogue", "ee"):
            (s,) = sessions_of(body, probe)
            assert s["outcome"] == "tls-failed-here", s
            assert s["tls"] is None and "NO_SHARED_CIPHER" in (s["error"] or ""), s
            assert body["probes"][probe]["status"] != "refused"
            assert body["probes"][probe]["grade"]["grade"] == "inconclusive", body["probes"][probe]["grade"]
    finally:
        server.stop()


def test_anonymous_suites_are_not_offered(serve: Serve) -> None:
    """Issue 12: a session without any certificate is not TLS (and not a refusal either)."""
    t = serve.new_test()
    anon = insecure_context()
    anon.maximum_version = ssl.TLSVersion.TLSv1_2
    anon.set_ciphers("aNULL:@SECLEVEL=0")
    raw = starttls_socket(serve.smtp_port, "anon.sender.example")
    with pytest.raises(ssl.SSLError):
        anon.wrap_socket(raw, server_hostname=f"{t['alias']}.wrong.x.test").close()
    raw.close()
    send(serve.smtp_port, [t["addresses"]["do"], t["addresses"]["dont"]], sni="do.x.test")
    body = serve.wait_for(t["alias"], lambda b: sessions_of(b, "wrong"))
    (s,) = sessions_of(body, "wrong")
    assert s["tls"] is None and s["outcome"] == "tls-failed-here", s
    assert body["probes"]["wrong"]["status"] != "refused"


def test_http_on_the_tls_port_is_our_failure_not_a_refusal(serve: Serve, setup_dir: Path) -> None:
    """Bytes that are no ClientHello: the sender was never shown a certificate."""
    t = serve.new_test()
    with contextlib.closing(starttls_socket(serve.smtp_port, "http.sender.example")) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\nHost: wrong.x.test\r\n\r\n")
        with contextlib.suppress(OSError):
            raw.recv(100)
    # attributed to no probe (no SNI); correlated with the test by client address
    send(serve.smtp_port, [t["addresses"]["do"], t["addresses"]["dont"]], sni="do.x.test")
    body = serve.wait_for(t["alias"], lambda b: b["verdict"]["code"] != "pending")
    assert body["verdict"]["code"] == "validates"  # nothing came for wrong: not a refusal either
    assert body["probes"]["wrong"]["status"] == "not-delivered"
    with contextlib.closing(sqlite3.connect(setup_dir.parent / "havedane.sqlite3")) as db:
        rows = db.execute("SELECT outcome, error FROM sessions WHERE helo = 'http.sender.example'").fetchall()
    assert [r[0] for r in rows] == ["tls-failed-here"] and "HTTP_REQUEST" in rows[0][1], rows


def test_closing_once_shown_our_certificate_is_a_refusal(serve: Serve, setup_dir: Path) -> None:
    """A sender that reads our certificate flight and hangs up mid-handshake refused it."""
    t = serve.new_test()
    with contextlib.closing(starttls_socket(serve.smtp_port, "hangup.sender.example")) as raw:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = insecure_context().wrap_bio(incoming, outgoing, server_hostname=f"{t['alias']}.wrong.x.test")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        raw.sendall(outgoing.read())
        assert raw.recv(65536)  # the server's flight, with its certificate
    send(serve.smtp_port, [t["addresses"]["do"], t["addresses"]["dont"]], sni="do.x.test")
    body = serve.wait_for(t["alias"], lambda b: b["probes"]["wrong"]["status"] == "refused")
    (s,) = sessions_of(body, "wrong")
    assert s["outcome"] == "handshake-failed" and chain_served(setup_dir, s["id"]) == "default", s


# -- a fatal alert right after the handshake ------------------------------------------------


def _hkdf_label(secret: bytes, label: str, length: int, algorithm: hashes.HashAlgorithm) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1)."""
    full = b"tls13 " + label.encode()
    info = struct.pack("!H", length) + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(algorithm, length, info).derive(secret)


def encrypted_alert(cipher: str, secret: bytes, description: int) -> bytes:
    """A TLS 1.3 fatal alert record protected with the client's first application
    traffic key (RFC 8446 §5.2, sequence number 0), as a client's stack sends it."""
    algorithm: hashes.HashAlgorithm = hashes.SHA384() if cipher.endswith("SHA384") else hashes.SHA256()
    key_len = 16 if "AES_128" in cipher else 32
    key = _hkdf_label(secret, "key", key_len, algorithm)
    iv = _hkdf_label(secret, "iv", 12, algorithm)
    inner = bytes([2, description, 21])  # level fatal, description, content type alert
    header = bytes([23, 3, 3]) + struct.pack("!H", len(inner) + 16)
    aead = ChaCha20Poly1305(key) if "CHACHA20" in cipher else AESGCM(key)
    return header + aead.encrypt(iv, inner, header)  # nonce: iv XOR 0


def alert_after_handshake(port: int, sni: str) -> None:
    """Complete TLS 1.3, then send a fatal bad_certificate alert in the same segment as the
    client's Finished, and close: no QUIT, no close_notify."""
    keylog = Path(tempfile.mkdtemp()) / "keys"
    ctx = insecure_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.keylog_filename = str(keylog)
    with contextlib.closing(starttls_socket(port, "alert.sender.example")) as raw:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        cipher = tls.cipher()
        assert cipher is not None
        secret = next(
            bytes.fromhex(line.split()[2])
            for line in keylog.read_text().splitlines()
            if line.startswith("CLIENT_TRAFFIC_SECRET_0")
        )
        raw.sendall(outgoing.read() + encrypted_alert(cipher[0], secret, 42))
        raw.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while raw.recv(65536):
                pass


def test_fatal_alert_after_the_handshake_keeps_the_tls_facts(matrix: Serve, setup_dir: Path) -> None:
    """Issue 11: a sender that completes TLS then sends a fatal alert without QUIT is a
    refusal that saw our certificate, with its version, cipher, SNI and chain."""
    t = matrix.new_test()
    send(matrix.smtp_port, [t["addresses"]["do"], t["addresses"]["dont"]], sni="do.x.test")
    for _ in range(3):
        alert_after_handshake(matrix.smtp_port, f"{t['alias']}.ta-badname.x.test")
    body = matrix.wait_for(t["alias"], lambda b: len(sessions_of(b, "ta-badname")) == 3)
    for s in sessions_of(body, "ta-badname"):
        assert s["tls"] is not None, s
        assert (
            s["tls"]["version"] == "TLSv1.3"
            and s["tls"]["cipher"]
            and s["tls"]["sni"] == f"{t['alias']}.ta-badname.x.test"
        ), s
        assert s["outcome"] == "tls-then-left" and chain_served(setup_dir, s["id"]) == "badname", s
    assert body["probes"]["ta-badname"]["grade"]["grade"] == "pass"


def test_sni_in_capitals_is_graded_on_the_chain_served(matrix: Serve) -> None:
    """Issue 11: SNI `<ALIAS>.EE.X.TEST` is served the ee chain (names are case-insensitive,
    RFC 6066 §3 / RFC 4343), so the delivery is graded on it, not inconclusive."""
    t = matrix.new_test()
    a = t["addresses"]
    send(matrix.smtp_port, [a["do"], a["dont"]], sni="do.x.test")
    host = f"{t['alias'].upper()}.EE.X.TEST"
    chain = deliver_with(matrix.smtp_port, insecure_context(), host, a["ee"])
    assert names(chain[0]) == ["elsewhere.invalid"]  # the ee chain
    body = matrix.wait_for(t["alias"], lambda b: b["probes"]["ee"]["deliveries"])
    assert body["probes"]["ee"]["deliveries"][0]["tls"]["sni"] == host
    assert body["probes"]["ee"]["grade"]["grade"] == "pass", body["probes"]["ee"]["grade"]


def test_reset_right_after_the_handshake_keeps_the_tls_facts(serve: Serve) -> None:
    """A sender that completes TLS and resets the connection (no QUIT, no close_notify)."""
    t = serve.new_test()
    ctx = insecure_context()
    for _ in range(3):
        raw = starttls_socket(serve.smtp_port, "reset.sender.example")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=f"{t['alias']}.wrong.x.test")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # RST
    send(serve.smtp_port, [t["addresses"]["do"], t["addresses"]["dont"]], sni="do.x.test")
    body = serve.wait_for(t["alias"], lambda b: len(sessions_of(b, "wrong")) == 3)
    for s in sessions_of(body, "wrong"):
        assert s["tls"] is not None and s["tls"]["version"] and s["tls"]["sni"] == f"{t['alias']}.wrong.x.test", s
        assert s["outcome"] == "tls-then-left", s
    assert body["probes"]["wrong"]["status"] == "refused"

"""The receiver's TLS policy: the server context, the chain served by SNI, and the rule
that tells the sender's refusal of our certificate from a handshake that failed here.
"""

from __future__ import annotations

import ssl

from havedane import pki
from havedane.config import Config

DEFAULT_CHAIN = "default"


def _note_certificate_sent(
    conn: object, direction: str, _version: int, content_type: int, msg_type: int, _data: bytes
) -> None:
    """OpenSSL's message callback: mark the connection once our Certificate message is
    written (in TLS 1.2 and 1.3 it goes out in the same flight as the ServerHello; the
    handshake then waits for the client, so the flight is on the wire)."""
    if content_type == _HANDSHAKE and msg_type == _CERTIFICATE and direction == "write":
        conn.havedane_certificate_sent = True  # type: ignore[attr-defined]


_HANDSHAKE = 22  # ContentType handshake (RFC 8446 §5.1, RFC 5246 §6.2.1)
_CERTIFICATE = 11  # HandshakeType certificate (RFC 8446 §4, RFC 5246 §7.4)


def _set_message_callback(ctx: ssl.SSLContext) -> None:
    """OpenSSL's message callback, without ssl.py's wrapper.

    CPython's hook for it is private: the `_msg_callback` attribute of `_ssl._SSLContext`,
    checked against CPython 3.11 (Modules/_ssl/debughelpers.c; stable since 3.8). It calls
    back with plain ints for every TLS record and handshake message (about 60 per
    connection); ssl.py's public-looking `SSLContext._msg_callback` wraps the callback in
    a function that makes three enums per call, which cost as much as the rest of the
    callback (callgrind: 1.4 M instructions per connection with the wrapper, 0.16 M
    without; docs/benchmarks.md "The floor")."""
    ssl._SSLContext._msg_callback.__set__(ctx, _note_certificate_sent)  # type: ignore[attr-defined]


def _context(chains: list[pki.Chain]) -> ssl.SSLContext:
    """Old protocol versions and old ciphers allowed, so that old senders are measured
    rather than turned away; but no anonymous (aNULL: ADH, AECDH) or null-encryption
    suites: a session that shows no certificate tests nothing (RFC 7672 §1.3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:!aNULL:!eNULL:@SECLEVEL=0")
    for chain in chains:
        ctx.load_cert_chain(chain.cert_file, chain.key_file)
    # OpenSSL's message callback: the only way to know whether the sender was shown our
    # certificate when a handshake fails.
    _set_message_callback(ctx)
    return ctx


def tls_context(chains: list[pki.Chain], by_sni: dict[str, list[pki.Chain]] | None = None) -> ssl.SSLContext:
    """The server context: the default chains loaded (OpenSSL picks by the client's
    signature algorithms), SNI captured on the SSLObject, and for the names in
    `by_sni` a context serving those chains instead (a conformance probe's ECDSA chain and
    its RSA sibling, recorded under the first one's name). A name `*.<parent>` there
    stands for every name one label below <parent>, as in a certificate (RFC 6125 §6.4.3):
    every test's host at a probe."""
    ctx = _context(chains)
    special = {name.lower(): (served[0].kind, _context(served)) for name, served in (by_sni or {}).items()}

    def on_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.havedane_sni = name  # type: ignore[attr-defined]
        asked = name.lower().rstrip(".") if name else ""
        chosen = special.get(asked) or special.get("*." + asked.partition(".")[2]) if asked else None
        if chosen is not None:
            sslobj.havedane_chain, sslobj.context = chosen  # type: ignore[attr-defined]

    ctx.sni_callback = on_sni
    return ctx


def probe_contexts(config: Config) -> ssl.SSLContext:
    """The TLS context for `config`: default chains plus each enabled probe's own."""
    by_sni = {
        p.tls_name(config.domain): pki.load_probe_chain(config.tls_dir, p.chain.value) for p in config.probes if p.chain
    }
    return tls_context(pki.load_chains(config.tls_dir), by_sni)


def refused_after(certificate_sent: bool, error: BaseException | None) -> bool:
    """Whether a failed handshake is the sender's refusal of our certificate.

    Only what the sender did once it was shown the certificate counts (RFC 7672 §2.2: a
    DANE sender that cannot authenticate the server must not deliver; it learns that
    from our Certificate message, RFC 8446 §4.4.2 / RFC 5246 §7.4.2):
    - a fatal alert it sent (OpenSSL names a received alert SSLV3_ALERT_*, TLSV1_ALERT_*,
      TLSV13_ALERT_*: bad_certificate, unknown_ca, certificate_unknown, ...), or
    - closing or resetting the connection (EOF, reset) after our certificate flight.
    Anything else is ours and no evidence either way: a failure before our Certificate was
    written (no shared cipher, version, group or signature algorithm, no ClientHello at all,
    e.g. HTTP on the port: OpenSSL's own reason, and our alert), or an error our stack
    detected after it (a record it could not read). A handshake that completed and then
    ended without MAIL is not decided here: that is `tls-then-left`.
    """
    if not certificate_sent:
        return False
    if isinstance(error, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError):
        return True
    return isinstance(error, ssl.SSLError) and "ALERT" in (error.reason or "")


def certificate_shown(sslobj: object) -> bool:
    """Whether our Certificate message went out on this (maybe failed) handshake."""
    return bool(getattr(sslobj, "havedane_certificate_sent", False))


def chain_served(sslobj: object) -> str:
    """The name of the chain the handshake served (set by the SNI callback)."""
    return str(getattr(sslobj, "havedane_chain", DEFAULT_CHAIN))


def sni_of(sslobj: object) -> str | None:
    """The server name the client asked for (captured by the SNI callback), bounded."""
    name = getattr(sslobj, "havedane_sni", None)
    return name[:255] if isinstance(name, str) else None

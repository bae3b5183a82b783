"""The SMTP receiver: an aiosmtpd SMTP subclass that records how each sender behaves.

One `Session` is recorded per connection: peer, local address, HELO, STARTTLS
outcome, TLS version/cipher/SNI, MAIL, RCPTs and how it ended. Deliveries are
committed to the store before the `250` (an acknowledged delivery is on disk).
The body is never kept.
"""

from __future__ import annotations

import asyncio
import collections
import email.parser
import email.policy
import ipaddress
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, TLSSetupException, syntax
from aiosmtpd.smtp import Session as SMTPSession

from havedane import pki, probes, quota, smtpdata
from havedane.config import Config, Listen
from havedane.store.base import Delivery, Outcome, Session, Store, StoreError, Tls
from havedane.wiretext import clean as _text  # bytes that are not UTF-8, NUL: U+FFFD

log = logging.getLogger("havedane.receiver")

IDENT = "havedane"


DEFAULT_CHAIN = "default"


def _note_certificate_sent(
    conn: object, direction: str, _version: object, content_type: object, msg_type: object, _data: object
) -> None:
    """OpenSSL's message callback: mark the connection once our Certificate message is
    written (in TLS 1.2 and 1.3 it goes out in the same flight as the ServerHello; the
    handshake then waits for the client, so the flight is on the wire)."""
    if direction == "write" and content_type == _HANDSHAKE and msg_type == _CERTIFICATE:
        conn.havedane_certificate_sent = True  # type: ignore[attr-defined]


_HANDSHAKE = ssl._TLSContentType.HANDSHAKE  # type: ignore[attr-defined]
_CERTIFICATE = ssl._TLSMessageType.CERTIFICATE  # type: ignore[attr-defined]


def _context(chains: list[pki.Chain]) -> ssl.SSLContext:
    """Old protocol versions and old ciphers allowed, so that old senders are measured
    rather than turned away; but no anonymous (aNULL: ADH, AECDH) or null-encryption
    suites: a session that shows no certificate tests nothing (RFC 7672 §1.3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:!aNULL:!eNULL:@SECLEVEL=0")
    for chain in chains:
        ctx.load_cert_chain(chain.cert_file, chain.key_file)
    # CPython's (private, stable since 3.8) hook for OpenSSL's message callback: the only way
    # to know whether the sender was shown our certificate when a handshake fails.
    ctx._msg_callback = _note_certificate_sent  # type: ignore[attr-defined]
    return ctx


def tls_context(chains: list[pki.Chain], by_sni: dict[str, list[pki.Chain]] | None = None) -> ssl.SSLContext:
    """The server context: the default chains loaded (OpenSSL picks by the client's
    signature algorithms), SNI captured on the SSLObject, and for the names in
    `by_sni` a context serving those chains instead (a conformance probe's ECDSA chain and
    its RSA sibling, recorded under the first one's name)."""
    ctx = _context(chains)
    special = {name.lower(): (served[0].kind, _context(served)) for name, served in (by_sni or {}).items()}

    def on_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.havedane_sni = name  # type: ignore[attr-defined]
        chosen = special.get(name.lower().rstrip(".")) if name else None
        if chosen is not None:
            sslobj.havedane_chain, sslobj.context = chosen  # type: ignore[attr-defined]

    ctx.sni_callback = on_sni
    return ctx


def probe_contexts(config: Config) -> ssl.SSLContext:
    """The TLS context for `config`: default chains plus each enabled probe's own."""
    by_sni = {
        p.tls_host(config.domain): pki.load_probe_chain(config.tls_dir, p.chain.value) for p in config.probes if p.chain
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


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower().rstrip(".")


class Receiver:
    """Shared state of all listeners: config, store, limits; also the aiosmtpd handler."""

    def __init__(self, config: Config, store: Store, context: ssl.SSLContext | None) -> None:
        self.config = config
        self.store = store
        self.context = context
        self.quota = quota.Quota(store)
        self.active: dict[str, int] = {}
        self.total_active = 0
        self.servers: list[asyncio.Server] = []
        self._saves: set[asyncio.Task[None]] = set()
        self.connections: set[ReceiverSMTP] = set()
        self.now: Callable[[], float] = time.time

    # -- lifecycle -----------------------------------------------------------

    async def start(self, listens: tuple[Listen, ...] | None = None) -> list[asyncio.Server]:
        loop = asyncio.get_running_loop()
        listens = listens or self.config.smtp_listen
        for listen in listens:
            server = await loop.create_server(self.protocol, listen.host, listen.port, reuse_address=True)
            self.servers.append(server)
        # Probes that offer no STARTTLS: decided at EHLO, before the client names a
        # domain, so they listen on addresses of their own (on the first listener's port).
        for probe in self.config.probes:
            address = self.config.probe_addresses.get(probe.name)
            if address and not probe.starttls:
                server = await loop.create_server(
                    lambda: self.protocol(tls=False), address, listens[0].port, reuse_address=True
                )
                self.servers.append(server)
        return self.servers

    def probe_at(self, local_ip: str) -> probes.Probe | None:
        for probe in self.config.probes:
            if self.config.probe_addresses.get(probe.name) == local_ip:
                return probe
        return None

    def protocol(self, tls: bool = True) -> ReceiverSMTP:
        return ReceiverSMTP(
            self,
            hostname=self.config.smtp_hostname,
            ident=IDENT,
            tls_context=self.context if tls else None,
            data_size_limit=self.config.max_message_size,
            timeout=self.config.smtp_timeout,
            enable_SMTPUTF8=True,
            proxy_protocol_timeout=10 if self.config.proxy_protocol else None,
        )

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
        # Connections still open are told so (RFC 5321 §3.8: 421 when shutting down) and
        # closed, so that their sessions are saved before the store closes.
        for conn in list(self.connections):
            conn.shut_down()
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        if self._saves:
            await asyncio.gather(*self._saves, return_exceptions=True)

    def bound(self) -> list[tuple[str, int]]:
        return [s.sockets[0].getsockname()[:2] for s in self.servers]

    # -- session bookkeeping ---------------------------------------------------

    def admit(self, client_ip: str) -> str | None:
        """None, or the 421 reply that turns the connection away."""
        if self.total_active >= self.config.max_connections:
            return "421 4.7.0 Too many connections, try again later"
        if self.active.get(client_ip, 0) >= self.config.max_connections_per_client:
            return "421 4.7.0 Too many connections from your address, try again later"
        self.total_active += 1
        self.active[client_ip] = self.active.get(client_ip, 0) + 1
        return None

    def release(self, client_ip: str) -> None:
        self.total_active -= 1
        left = self.active.get(client_ip, 1) - 1
        if left:
            self.active[client_ip] = left
        else:
            self.active.pop(client_ip, None)

    def save(self, session: Session) -> None:
        task = asyncio.ensure_future(self._save(session))
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    async def _save(self, session: Session) -> None:
        try:
            await self.store.save_session(session)
        except StoreError as e:
            log.error("session %s not saved: %s", session.id, e)
        log.info(json.dumps(session_log(session), separators=(",", ":")))

    # -- aiosmtpd handler hooks ------------------------------------------------

    async def handle_RCPT(
        self, server: ReceiverSMTP, session: SMTPSession, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        record = server.record
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        address = _text(address)
        local, domain = _split(address)
        probe = probes.probe_for_host(self.config.probes, self.config.domain, domain)
        if probe is None:
            # Never a relay: only our probe hosts are ours (RFC 5321 §3.6.2).
            return f"550 5.7.1 <{address}>: relay access denied, not a probe domain of {self.config.domain}"
        alias = local.lower()
        try:
            test = await self.store.get_test(alias) if alias.isalnum() and len(alias) <= 64 else None
        except StoreError as e:
            log.error("RCPT %s deferred: %s", address, e)
            return "451 4.3.0 Temporary failure looking up the test, try again later"
        if test is None or test.created < self.now() - self.config.retention_days * 86400:
            return f"550 5.1.1 <{address}>: no such test; create one at {self.config.public_url}"
        if (alias, domain) in {(r_local.lower(), r_domain) for r_local, r_domain in map(_split, envelope.rcpt_tos)}:
            # Named already in this message: accepted (RFC 5321 §3.3 lets a server accept a
            # duplicate recipient), but one message makes one delivery per probe of a test.
            return "250 2.1.5 OK (named already, recorded once)"
        try:
            usage = await self.quota.usage(alias)
        except StoreError as e:
            log.error("RCPT %s deferred: %s", address, e)
            return "451 4.3.0 Temporary failure looking up the test, try again later"
        # Beyond a test's limits the answer is permanent (RFC 5321 §4.2.1, 5yz): the test has no
        # room until it expires, days later, so a sender's retries (§4.5.4.1) would only cost both
        # sides, and a bounce tells the visitor now. 550 with 5.2.2 "mailbox full" (RFC 3463 §3.3),
        # not 552: §4.5.3.1.10 tells clients to take a 552 at RCPT as temporary.
        held = usage.deliveries.get(probe.name, 0)
        if held >= self.config.max_deliveries_per_probe:
            return (
                f"550 5.2.2 <{address}>: this test holds {held} messages at {probe.name}, its most; "
                f"create a new one at {self.config.public_url}"
            )
        if record.alias is None and usage.sessions >= self.config.max_sessions_per_test:
            return (
                f"550 5.2.2 <{address}>: this test has had {usage.sessions} connections, its most; "
                f"create a new one at {self.config.public_url}"
            )
        envelope.rcpt_tos.append(address)
        record.rcpts.append(address)
        if record.alias is None:
            record.alias, record.probe = alias, probe.name
            usage.sessions += 1  # the session is stored under this test
        return "250 2.1.5 OK"

    async def handle_EHLO(
        self, server: ReceiverSMTP, session: SMTPSession, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd 1.4.6 offers AUTH LOGIN PLAIN after STARTTLS; nothing here authenticates
        anyone (a receiver for the world's mail, RFC 4954 not implemented), so it is not offered.
        With this hook aiosmtpd leaves setting host_name to it."""
        session.host_name = hostname
        return [r for r in responses if not r[4:].upper().startswith("AUTH")]

    async def handle_PROXY(self, server: ReceiverSMTP, session: SMTPSession, envelope: Envelope, proxy: Any) -> bool:
        """Behind a TCP load balancer ([smtp] proxy_protocol): the client is the one the
        PROXY header names. (The connection caps counted the balancer's address.)"""
        if not proxy or not proxy.valid:
            return False
        if proxy.src_addr is not None:
            server.record.client_ip = _ip(str(proxy.src_addr))
            server.record.client_port = int(proxy.src_port or 0)
        return True

    async def handle_MAIL(
        self, server: ReceiverSMTP, session: SMTPSession, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        address = _text(address)
        local, domain = _split(address)
        if address and (not local or not domain or any(c.isspace() for c in address)):
            return "553 5.1.7 Malformed sender address"
        server.record.mail_from = address
        server.messages += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_DATA(self, server: ReceiverSMTP, session: SMTPSession, envelope: Envelope) -> str:
        record = server.record
        now = self.now()
        content = envelope.original_content or b""
        message_id = _message_id(content)
        deliveries = []
        for rcpt in envelope.rcpt_tos:
            local, domain = _split(rcpt)
            probe = probes.probe_for_host(self.config.probes, self.config.domain, domain)
            assert probe is not None  # checked at RCPT
            deliveries.append(
                Delivery(
                    alias=local.lower(),
                    probe=probe.name,
                    received_at=now,
                    client_ip=record.client_ip,
                    helo=record.helo,
                    mail_from=envelope.mail_from or "",
                    rcpt=rcpt,
                    tls=record.tls,
                    session_id=record.id,
                    size=len(content),
                    message_id=message_id,
                )
            )
        try:
            await self.store.add_deliveries(deliveries)
        except StoreError as e:
            log.error("deliveries not recorded: %s", e)
            return "451 4.3.0 Temporary failure recording the message, try again later"
        record.delivered += len(deliveries)
        for d in deliveries:
            self.quota.delivered(d.alias, d.probe)
        return f"250 2.0.0 OK: recorded {len(deliveries)} deliveries"

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            return "454 4.7.0 TLS handshake failed"
        log.exception("SMTP session error", exc_info=error)
        return "451 4.3.0 Internal error, try again later"


def _message_id(content: bytes) -> str | None:
    """The Message-ID header only; everything else in the message is dropped."""
    head = content.split(b"\r\n\r\n", 1)[0][:16384]
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        value = headers.get("Message-ID")
    except Exception:  # noqa: BLE001 - hostile headers must never break a delivery
        return None
    return _text(str(value))[:256] if value else None


def session_log(s: Session) -> dict[str, Any]:
    return {
        "event": "smtp-session",
        "id": s.id,
        "client": s.client_ip,
        "local": f"{s.local_ip}:{s.local_port}",
        "helo": s.helo,
        "tls": s.tls and {"version": s.tls.version, "cipher": s.tls.cipher, "sni": s.tls.sni},
        "mail_from": s.mail_from,
        "rcpts": s.rcpts,
        "probe": s.probe,
        "alias": s.alias,
        "outcome": s.outcome.value,
        "error": s.error,
        "seconds": round((s.ended or s.started) - s.started, 3),
    }


class ReceiverSMTP(SMTP):
    """One connection. `record` survives STARTTLS (aiosmtpd starts a new Session then)."""

    def __init__(self, receiver: Receiver, **kwargs: Any) -> None:
        # aiosmtpd 1.4.6 keeps command_size_limits on the class: every EHLO raised the MAIL limit
        # of all connections and every new connection reset it. One per connection here.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(receiver, **kwargs)
        # No AUTH (see Receiver.handle_EHLO): without an smtp_AUTH method aiosmtpd answers it as an
        # unknown command, which counts toward its limit of 5 per connection (BOGUS_LIMIT) and
        # cannot start an AUTH dialogue (was: a long answer to it gave 451 and a traceback).
        self._smtp_methods.pop("AUTH", None)
        self._auth_methods.clear()
        self.receiver = receiver
        self.record: Session = None  # type: ignore[assignment]  # set in connection_made
        self._admitted: str | None = None  # the address whose connection slot this holds
        self._finished = False
        self._timed_out = False
        self.messages = 0  # MAIL commands accepted on this connection

    # -- connection lifecycle ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.record is None:
            peer = transport.get_extra_info("peername") or ("", 0)
            sock = transport.get_extra_info("sockname") or ("", 0)
            client_ip = _ip(peer[0])
            self.record = Session(
                id=secrets.token_hex(8),
                started=self.receiver.now(),
                client_ip=client_ip,
                client_port=int(peer[1]),
                local_ip=_ip(sock[0]),
                local_port=int(sock[1]),
            )
            refusal = self.receiver.admit(client_ip)
            if refusal is not None:
                self.record.outcome = Outcome.REFUSED_BUSY
                transport.write(refusal.encode() + b"\r\n")
                transport.close()
                return
            # The slot is counted for the TCP peer; a PROXY header may change record.client_ip
            # later, so the address is kept to release the same slot.
            self._admitted = client_ip
            self.receiver.connections.add(self)
        elif self._tls_protocol is not None:
            # The STARTTLS handshake just completed: asyncio calls this before it reads what
            # came after the client's Finished. Record the TLS facts now: a fatal alert or a
            # reset in that same read puts the SSL object in an error state where version()
            # and cipher() say nothing, and the command that waited for the handshake only
            # resumes after that read.
            self._record_tls()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted is None:
            return
        if not self._finished:
            self._finished = True
            self.receiver.connections.discard(self)
            self.receiver.release(self._admitted)
            self._finish(error)
        if self.session is not None and self._timeout_handle is not None:
            super().connection_lost(error)

    def _finish(self, error: Exception | None) -> None:
        r = self.record
        r.ended = self.receiver.now()
        if r.starttls and r.tls is None and r.outcome is Outcome.OPEN:
            # The handshake completed, but the client was gone before smtp_STARTTLS resumed: a
            # DANE sender that rejects our certificate sends its Finished, QUIT and close_notify
            # at once (Postfix), and aiosmtpd cancels the command loop on that close_notify.
            self._record_tls()
        if r.outcome is Outcome.OPEN:
            if r.delivered:
                r.outcome = Outcome.DELIVERED
            elif self._timed_out:
                r.outcome = Outcome.TIMEOUT
            elif r.mail_from is not None and r.rcpts:
                r.outcome = Outcome.LEFT  # recipients accepted, message never completed
            elif r.mail_from is not None:
                r.outcome = Outcome.REJECTED
            elif r.tls is not None:
                r.outcome = Outcome.TLS_THEN_LEFT
            else:
                r.outcome = Outcome.LEFT
        if r.probe is None and r.tls is not None and r.tls.sni:
            probe = probes.probe_for_host(self.receiver.config.probes, self.receiver.config.domain, r.tls.sni)
            r.probe = probe.name if probe else None
        if r.probe is None:
            probe = self.receiver.probe_at(r.local_ip)
            r.probe = probe.name if probe else None
        if error is not None and r.error is None and not r.delivered and not isinstance(error, TLSSetupException):
            r.error = f"{type(error).__name__}: {error}"[:200]
        self.receiver.save(r)

    def shut_down(self) -> None:
        """The receiver is stopping: say so, record the session now (a TLS close can
        take a while), then close."""
        transport: Any = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(f"421 4.3.2 {self.hostname} Service shutting down\r\n".encode())
        if not self._finished and self._admitted is not None:  # only admitted ones are in connections
            self._finished = True
            self.receiver.connections.discard(self)
            self.receiver.release(self._admitted)
            if self.record.outcome is Outcome.OPEN and not self.record.delivered:
                self.record.outcome = Outcome.SHUTDOWN
            self._finish(None)
        if transport is not None:
            transport.close()

    def _timeout_cb(self) -> None:
        self._timed_out = True
        # The timer restarts at every recognised command (aiosmtpd); when it runs out, say why
        # before closing, as Postfix does (RFC 5321 §4.5.3.2 lets the server give up).
        transport: Any = self.transport  # TCP, or TLS after STARTTLS: both can write
        if transport is not None and not transport.is_closing():
            transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def handle_exception(self, error: Exception) -> str:
        transport: Any = self.transport
        if transport is None or transport.is_closing():
            # The connection is closing already (timeout, too many unknown commands, the peer):
            # asyncio's TLS transport then raises AttributeError on use. Not an error of ours,
            # and there is no one to answer (push drops the reply).
            log.info("session %s: %s after the connection closed", self.record.id, type(error).__name__)
            return "421 4.3.0 Connection closed"
        status: str = await super().handle_exception(error)
        return status

    async def push(self, status: str | bytes) -> None:
        transport: Any = self.transport
        if transport is None or transport.is_closing():
            # Closed by aiosmtpd (too many unknown commands) with pipelined commands still to
            # answer: a write to a closed TLS transport raises AttributeError in asyncio.
            return
        # Replies echo what the client sent (an unknown command, an address, VRFY's argument):
        # a bare CR or LF there would break the reply line (RFC 5321 §2.3.8), so it goes out as
        # a space; bytes that are not UTF-8 (lone surrogates here) could not be encoded at all.
        if isinstance(status, str):
            await super().push(_text(status).replace("\r", " ").replace("\n", " "))
        else:
            await super().push(status.replace(b"\r", b" ").replace(b"\n", b" "))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        try:
            return super()._getaddr(arg)
        except IndexError:
            # "<" or "<a@" with nothing after: the email package's parser runs off the end
            # (Python 3.11) instead of raising HeaderParseError; aiosmtpd then answers 553.
            return None, None

    # -- commands ----------------------------------------------------------------

    async def smtp_HELO(self, hostname: str) -> None:
        await super().smtp_HELO(hostname)
        if self.session is not None and self.session.host_name:
            self.record.helo = _text(self.session.host_name)[:255]

    async def smtp_EHLO(self, hostname: str) -> None:
        await super().smtp_EHLO(hostname)
        if self.session is not None and self.session.host_name:
            self.record.helo = _text(self.session.host_name)[:255]

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str) -> None:
        if self.messages >= self.receiver.config.max_messages_per_connection:
            # Temporary, as Exim answers past smtp_accept_max_per_connection: a sender with more
            # to deliver does so in a new connection (RFC 5321 §3.8: 421, then close).
            await self.push(f"421 4.7.0 {self.hostname} Too many messages in one connection, use a new one")
            transport: Any = self.transport
            if transport is not None:
                transport.close()
            return
        await super().smtp_MAIL(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd 1.4.6's smtp_DATA with its reading loop replaced by smtpdata.read_text (one
        bytearray, not one object per line: see there). Same checks, replies and hook; it uses
        aiosmtpd's private _reader, _writer, _call_handler_hook and _set_post_data_state."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            state, text = await smtpdata.read_text(self._reader, self.data_size_limit, self.line_length_limit)
        except asyncio.CancelledError:
            self._writer.close()  # the connection was lost during DATA
            raise
        if state is smtpdata.Text.TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        elif state is smtpdata.Text.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
        if state is not smtpdata.Text.NOMINAL:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = text
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg or not self.tls_context or self._tls_protocol is not None:
            if self._tls_protocol is not None:
                await self.push("503 5.5.1 TLS already active")
                return
            await super().smtp_STARTTLS(arg)
            return
        self.record.starttls = True
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as e:
            raw = getattr(self._tls_protocol, "_sslobj", None)
            shown = getattr(raw, "havedane_certificate_sent", False)
            refused = refused_after(shown, e.__cause__)
            self.record.outcome = Outcome.HANDSHAKE_FAILED if refused else Outcome.TLS_FAILED_HERE
            self.record.error = (
                f"{type(e.__cause__).__name__}: {e.__cause__}"[:200] if e.__cause__ else "handshake failed"
            )
            sni = self._sni()
            self.record.chain = getattr(raw, "havedane_chain", DEFAULT_CHAIN) if shown else None
            if sni:
                self.record.tls = None
                probe = probes.probe_for_host(self.receiver.config.probes, self.receiver.config.domain, sni)
                self.record.probe = probe.name if probe else None
            raise
        self._record_tls()

    def _record_tls(self) -> None:
        """What the completed handshake showed (nothing before it completes)."""
        sslobj = self._ssl_object()
        if sslobj is not None and self.record.tls is None:
            cipher = sslobj.cipher()
            self.record.tls = Tls(sslobj.version() or "", cipher[0] if cipher else "", self._sni())
            self.record.chain = getattr(sslobj, "havedane_chain", DEFAULT_CHAIN)

    def _ssl_object(self) -> ssl.SSLObject | None:
        if self._tls_protocol is None:
            return None
        return self._tls_protocol._extra.get("ssl_object")

    def _sni(self) -> str | None:
        sslobj = self._ssl_object() or (self._tls_protocol and getattr(self._tls_protocol, "_sslobj", None))
        name = getattr(sslobj, "havedane_sni", None)
        return name[:255] if isinstance(name, str) else None


def _ip(addr: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 shown as IPv4."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)

"""The least subclassing of aiosmtpd's `SMTP` that the receiver needs: the connection's
life (admission, the session saved when it ends), the handshake evidence of STARTTLS,
and reading DATA in one buffer.

Checked against aiosmtpd 1.4.6 (aiosmtpd/smtp.py). The private attributes it touches,
each where it is used: `command_size_limits` (a class attribute there), `_smtp_methods`
and `_auth_methods` (no AUTH), `_tls_protocol` (the STARTTLS layer: its asyncio private
`_sslobj` is the only view of a handshake that failed), `_timeout_handle` and
`_timeout_cb` (the idle timeout), `_getaddr` (plain paths read by smtpaddr before it),
and in smtp_DATA `_reader`, `_writer`, `_call_handler_hook` and `_set_post_data_state`.
Not an attribute but a habit of its `SMTP.__init__`: it finds the commands, AUTH
mechanisms and hooks by listing the protocol's and the handler's attributes on every
connection (`__dir__` and `Hooks`).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import secrets
import ssl
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, TLSSetupException, syntax

from havedane import admission, probes, smtpaddr, smtpdata, tlspolicy
from havedane.connection import Draft, ip
from havedane.model import Outcome, Tls
from havedane.wiretext import clean as text

if TYPE_CHECKING:
    from havedane.receiver import Receiver

log = logging.getLogger("havedane.receiver")


class Hooks:
    """The handler aiosmtpd is given: the receiver's hooks and nothing else.

    aiosmtpd 1.4.6's `SMTP.__init__` looks its handler over on every connection
    (`dir(handler)` for handle_*, `inspect.getmembers(handler)` for auth_*,
    `inspect.signature` of handle_EHLO): over the whole `Receiver` that cost as much as
    the rest of a bare `SMTP()` (bench/floor.py, docs/benchmarks.md "The floor")."""

    def __init__(self, receiver: Receiver) -> None:
        # Every handle_* hook the receiver defines (aiosmtpd calls those it finds), nothing else;
        # handle_exception too (aiosmtpd's own handle_exception asks the handler for it).
        for name in dir(type(receiver)):
            if name.startswith("handle_"):
                setattr(self, name, getattr(receiver, name))
        # inspect.signature looks for `__signature__` on the function before it reads its code:
        # worked out once here instead of on every connection.
        ehlo = getattr(getattr(self, "handle_EHLO", None), "__func__", None)
        if ehlo is not None and "__signature__" not in vars(ehlo):
            ehlo.__signature__ = inspect.signature(ehlo)


_SCANNED: dict[type, list[str]] = {}  # per class: the names ReceiverSMTP.__dir__ lists


class ReceiverSMTP(SMTP):
    """One connection. `record` survives STARTTLS (aiosmtpd starts a new Session then)."""

    def __init__(self, receiver: Receiver, **kwargs: Any) -> None:
        # aiosmtpd 1.4.6 keeps command_size_limits on the class: every EHLO raised the MAIL limit
        # of all connections and every new connection reset it. One per connection here.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(receiver.hooks, **kwargs)
        # No AUTH (see Receiver.handle_EHLO): without an smtp_AUTH method aiosmtpd 1.4.6 answers it
        # as an unknown command, which counts toward its limit of 5 per connection (BOGUS_LIMIT) and
        # cannot start an AUTH dialogue (was: a long answer to it gave 451 and a traceback).
        self._smtp_methods.pop("AUTH", None)
        self._auth_methods.clear()
        self.receiver = receiver
        self.record: Draft = None  # type: ignore[assignment]  # set in connection_made
        self._admitted: str | None = None  # the address whose connection slot this holds
        self._finished = False
        self._timed_out = False
        self.messages = 0  # MAIL commands accepted on this connection

    def __dir__(self) -> list[str]:
        """Only the names aiosmtpd 1.4.6's `SMTP.__init__` looks for in `dir(self)` and
        `inspect.getmembers(self)` (smtp_* commands, auth_* mechanisms), the same on every
        connection of a class: listing and getting every attribute of the protocol was
        a third of a connection's set-up."""
        cls = type(self)
        names = _SCANNED.get(cls)
        if names is None:
            names = _SCANNED[cls] = [name for name in dir(cls) if name.startswith(("smtp_", "auth_"))]
        return names

    # -- connection lifecycle ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.record is None:
            peer = transport.get_extra_info("peername") or ("", 0)
            sock = transport.get_extra_info("sockname") or ("", 0)
            client_ip = ip(peer[0])
            self.record = Draft(
                id=secrets.token_hex(8),
                started=self.receiver.now(),
                client_ip=client_ip,
                client_port=int(peer[1]),
                local_ip=ip(sock[0]),
                local_port=int(sock[1]),
            )
            refusal = self.receiver.admission.admit(client_ip)
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
            self.receiver.admission.release(self._admitted)
            self._finish(error)
        # aiosmtpd 1.4.6 asserts a timeout handle: none when the connection never got going.
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
        r.outcome = r.ending(self._timed_out)
        config = self.receiver.config
        if r.probe is None and r.tls is not None and r.tls.sni:
            self._named_in_sni(r.tls.sni)
        if r.probe is None:
            probe = admission.probe_at(config, r.local_ip)
            r.probe = probe.name if probe else None
        if error is not None and r.error is None and not r.delivered and not isinstance(error, TLSSetupException):
            r.error = f"{type(error).__name__}: {error}"[:200]
        self.receiver.save(r.session())

    def shut_down(self) -> None:
        """The receiver is stopping: say so, record the session now (a TLS close can
        take a while), then close."""
        transport: Any = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(f"421 4.3.2 {self.hostname} Service shutting down\r\n".encode())
        if not self._finished and self._admitted is not None:  # only admitted ones are in connections
            self._finished = True
            self.receiver.connections.discard(self)
            self.receiver.admission.release(self._admitted)
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
        if status[:4] in ("552 ", b"552 "):
            # Every 552 ("exceeded storage allocation", RFC 5321 §4.2.3) here is [smtp] max_message_size:
            # aiosmtpd's at MAIL for a SIZE= beyond it (RFC 1870 §6), and smtp_DATA's for a longer text.
            self.receiver.metrics.refused("max_message_size", None)
        transport: Any = self.transport
        if transport is None or transport.is_closing():
            # Closed by aiosmtpd (too many unknown commands) with pipelined commands still to
            # answer: a write to a closed TLS transport raises AttributeError in asyncio.
            return
        # Replies echo what the client sent (an unknown command, an address, VRFY's argument):
        # a bare CR or LF there would break the reply line (RFC 5321 §2.3.8), so it goes out as
        # a space; bytes that are not UTF-8 (lone surrogates here) could not be encoded at all.
        if isinstance(status, str):
            await super().push(text(status).replace("\r", " ").replace("\n", " "))
        else:
            await super().push(status.replace(b"\r", b" ").replace(b"\n", b" "))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = smtpaddr.plain_path(arg)  # most paths, without the email package (see smtpaddr)
        if plain is not None and not (
            self.local_part_limit and len(plain[0].rpartition("@")[0]) > self.local_part_limit
        ):
            return plain
        try:
            return super()._getaddr(arg)
        except IndexError:
            # "<" or "<a@" with nothing after: the email package's parser runs off the end
            # (Python 3.11) instead of raising HeaderParseError; aiosmtpd then answers 553.
            return None, None

    # -- commands ----------------------------------------------------------------

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str) -> None:
        if self.messages >= self.receiver.config.max_messages_per_connection:
            # Temporary, as Exim answers past smtp_accept_max_per_connection: a sender with more
            # to deliver does so in a new connection (RFC 5321 §3.8: 421, then close). Before
            # aiosmtpd parses the command: the answer is the same whatever it says.
            reply = f"421 4.7.0 {self.hostname} Too many messages in one connection, use a new one"
            await self.push(self.receiver.metrics.refused("max_messages_per_connection", reply))
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
            state, content = await smtpdata.read_text(self._reader, self.data_size_limit, self.line_length_limit)
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
        self.envelope.content = self.envelope.original_content = content
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
            self._record_failed_handshake(e.__cause__)
            raise
        self._record_tls()

    # -- handshake evidence --------------------------------------------------------

    def _record_failed_handshake(self, cause: BaseException | None) -> None:
        """What a handshake that failed showed: whether the sender was shown our certificate
        (tlspolicy.refused_after), the chain and the name it asked for."""
        # asyncio's SSLProtocol keeps the SSL object in its private `_sslobj` (CPython 3.11);
        # aiosmtpd's session.ssl is only set once a handshake completes.
        raw = getattr(self._tls_protocol, "_sslobj", None)
        shown = tlspolicy.certificate_shown(raw)
        self.record.outcome = (
            Outcome.HANDSHAKE_FAILED if tlspolicy.refused_after(shown, cause) else Outcome.TLS_FAILED_HERE
        )
        self.record.error = f"{type(cause).__name__}: {cause}"[:200] if cause else "handshake failed"
        self.record.chain = tlspolicy.chain_served(raw) if shown else None
        sni = tlspolicy.sni_of(raw)
        if sni:
            self.record.tls = None
            self._named_in_sni(sni)

    def _named_in_sni(self, sni: str) -> None:
        """The probe the SNI names, and for a session that named no test in RCPT, the test
        whose host it is (`<alias>.<probe>.<domain>`; confirmed when saved: tie.confirm_sni)."""
        config = self.receiver.config
        named = probes.probe_for_host(config.probes, config.domain, sni)
        self.record.probe = named.probe.name if named else None
        if named is not None and named.probe.sni_names_test and self.record.alias is None:
            self.record.alias = named.alias

    def _record_tls(self) -> None:
        """What the completed handshake showed (nothing before it completes)."""
        sslobj = self._ssl_object()
        if sslobj is not None and self.record.tls is None:
            cipher = sslobj.cipher()
            self.record.tls = Tls(sslobj.version() or "", cipher[0] if cipher else "", tlspolicy.sni_of(sslobj))
            self.record.chain = tlspolicy.chain_served(sslobj)

    def _ssl_object(self) -> ssl.SSLObject | None:
        # aiosmtpd 1.4.6 sets session.ssl to this same mapping (the TLS protocol's private
        # `_extra`) in connection_made, after the point where the facts are recorded.
        if self._tls_protocol is None:
            return None
        sslobj: ssl.SSLObject | None = self._tls_protocol._extra.get("ssl_object")
        return sslobj

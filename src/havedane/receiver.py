"""The SMTP receiver: the aiosmtpd handler that records how each sender behaves.

One `Session` is recorded per connection: peer, local address, HELO, STARTTLS
outcome, TLS version/cipher/SNI, MAIL, RCPTs and how it ended. Deliveries are
committed to the store before the `250` (an acknowledged delivery is on disk).
The body is never kept.

In parts: the TLS policy (tlspolicy), the listeners, caps and limits (admission),
the connection's state (connection), the subclass of aiosmtpd's SMTP (smtpserver);
here aiosmtpd's documented handler hooks and the receiver's life.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import Envelope, TLSSetupException
from aiosmtpd.smtp import Session as SMTPSession

from havedane import admission, probes, quota, tie
from havedane.config import Config, Listen
from havedane.connection import ip, session_log, split
from havedane.messageid import message_id as _message_id
from havedane.metrics import Metrics
from havedane.model import Delivery, Session
from havedane.smtpserver import Hooks, ReceiverSMTP
from havedane.store import Store, StoreError
from havedane.tlspolicy import probe_contexts, tls_context
from havedane.wiretext import clean as text  # bytes that are not UTF-8, NUL: U+FFFD

__all__ = ["IDENT", "Receiver", "probe_contexts", "tls_context"]

log = logging.getLogger("havedane.receiver")

IDENT = "havedane"


class Receiver:
    """Shared state of all listeners: config, store, limits; also the aiosmtpd handler."""

    def __init__(
        self, config: Config, store: Store, context: ssl.SSLContext | None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.context = context
        self.metrics = metrics or Metrics()
        self.quota = quota.Quota(store)
        self.admission = admission.Admission(config, self.metrics)
        self.servers: list[asyncio.Server] = []
        self._saves: set[asyncio.Task[None]] = set()
        self.connections: set[ReceiverSMTP] = set()
        self.now: Callable[[], float] = time.time
        self.hooks = Hooks(self)  # what aiosmtpd is handed as its handler (see Hooks)

    # -- lifecycle -----------------------------------------------------------

    async def start(self, listens: tuple[Listen, ...] | None = None) -> list[asyncio.Server]:
        self.servers += await admission.listen(self.config, self.protocol, listens or self.config.smtp_listen)
        return self.servers

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

    def save(self, session: Session) -> None:
        task = asyncio.ensure_future(self._save(session))
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    async def _save(self, session: Session) -> None:
        session = await tie.confirm_sni(session, self.store, self.quota, self.config, self.now())
        self.metrics.session(session)
        try:
            with self.metrics.writing("save_session"):
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
            return self.metrics.refused("max_recipients", "452 4.5.3 Too many recipients")
        address = text(address)
        _, domain = split(address)
        named = probes.probe_for_host(self.config.probes, self.config.domain, domain)
        if named is None:
            # Never a relay: only our probe hosts are ours (RFC 5321 §3.6.2).
            return f"550 5.7.1 <{address}>: relay access denied, not a probe domain of {self.config.domain}"
        # The test is named by the host (<alias>.<probe>.<domain>), whatever the local part.
        probe, alias = named.probe, named.alias
        try:
            test = await self.store.get_test(alias) if alias is not None else None
        except StoreError as e:
            log.error("RCPT %s deferred: %s", address, e)
            return "451 4.3.0 Temporary failure looking up the test, try again later"
        if alias is None or test is None or test.created < self.now() - self.config.retention_days * 86400:
            return f"550 5.1.1 <{address}>: no such test; create one at {self.config.public_url}"
        if domain in {split(r)[1] for r in envelope.rcpt_tos}:
            # Named already in this message: accepted (RFC 5321 §3.3 lets a server accept a
            # duplicate recipient), but one message makes one delivery per probe of a test.
            return "250 2.1.5 OK (named already, recorded once)"
        try:
            usage = await self.quota.usage(alias)
        except StoreError as e:
            log.error("RCPT %s deferred: %s", address, e)
            return "451 4.3.0 Temporary failure looking up the test, try again later"
        refusal = admission.over_limit(self.config, address, probe.name, usage, record.alias is None)
        if refusal is not None:
            return self.metrics.refused(*refusal)
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
        server.record.helo = text(hostname)[:255]
        return [r for r in responses if not r[4:].upper().startswith("AUTH")]

    async def handle_HELO(self, server: ReceiverSMTP, session: SMTPSession, envelope: Envelope, hostname: str) -> str:
        """With this hook aiosmtpd leaves setting host_name and the reply to it."""
        session.host_name = hostname
        server.record.helo = text(hostname)[:255]
        return f"250 {server.hostname}"

    async def handle_PROXY(self, server: ReceiverSMTP, session: SMTPSession, envelope: Envelope, proxy: Any) -> bool:
        """Behind a TCP load balancer ([smtp] proxy_protocol): the client is the one the
        PROXY header names. (The connection caps counted the balancer's address.)"""
        if not proxy or not proxy.valid:
            return False
        if proxy.src_addr is not None:
            server.record.client_ip = ip(str(proxy.src_addr))
            server.record.client_port = int(proxy.src_port or 0)
        return True

    async def handle_MAIL(
        self, server: ReceiverSMTP, session: SMTPSession, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        address = text(address)
        local, domain = split(address)
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
            named = probes.probe_for_host(self.config.probes, self.config.domain, split(rcpt)[1])
            assert named is not None and named.alias is not None  # checked at RCPT
            deliveries.append(
                Delivery(
                    alias=named.alias,
                    probe=named.probe.name,
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
            with self.metrics.writing("add_deliveries"):
                await self.store.add_deliveries(deliveries)
        except StoreError as e:
            log.error("deliveries not recorded: %s", e)
            return "451 4.3.0 Temporary failure recording the message, try again later"
        record.delivered += len(deliveries)
        self.metrics.delivered(deliveries)
        for d in deliveries:
            self.quota.delivered(d.alias, d.probe)
        return f"250 2.0.0 OK: recorded {len(deliveries)} deliveries"

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            return "454 4.7.0 TLS handshake failed"
        log.exception("SMTP session error", exc_info=error)
        return "451 4.3.0 Internal error, try again later"

"""What havedane knows about a test, as frozen values: no I/O, nothing of the project.

The receiver and the Postfix bridge make them, the store keeps them, the verdict
judges them. Times are seconds since the epoch (UTC) everywhere inside; the API
renders them as ISO 8601 with a Z, and the page in the visitor's own time zone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    """How a connection ended."""

    OPEN = "open"  # still connected (or the process died before it ended)
    DELIVERED = "delivered"  # at least one message accepted
    TLS_THEN_LEFT = "tls-then-left"  # TLS completed, then QUIT/close/alert without MAIL: a refusal
    HANDSHAKE_FAILED = "handshake-failed"  # shown our certificate, the client aborted the handshake: a refusal
    # The handshake failed before our certificate was sent (no shared cipher, version or group;
    # no ClientHello) or in our own TLS stack: ours, and no evidence either way.
    TLS_FAILED_HERE = "tls-failed-here"
    LEFT = "left"  # no TLS, no delivery (e.g. EHLO then QUIT: TLS required but not offered)
    REJECTED = "rejected"  # tried to send, every recipient refused
    TIMEOUT = "timeout"
    REFUSED_BUSY = "refused-busy"  # turned away at connect: too many connections (421)
    SHUTDOWN = "server-shutdown"  # still open when the receiver stopped (421): proves nothing


class Tie(enum.StrEnum):
    """How a session is tied to its test (the API's `tied_by`)."""

    RCPT = "rcpt"  # a recipient it named: <local>@<alias>.<probe>.<domain>
    SNI = "sni"  # it sent no MAIL, but asked for <alias>.<probe>.<domain> in TLS (RFC 6066 §3)
    ADDRESS = "address"  # neither: by the client address that delivered the test's other probes


@dataclass(frozen=True)
class Tls:
    version: str
    cipher: str
    sni: str | None


@dataclass(frozen=True)
class Test:
    __test__ = False  # a visitor's test, not a pytest class

    alias: str
    created: float
    client_ip: str | None = None


@dataclass(frozen=True)
class Session:
    """One SMTP connection, as the receiver saw it (while open: as far as it got)."""

    id: str
    started: float
    client_ip: str
    client_port: int
    local_ip: str
    local_port: int
    ended: float | None = None
    helo: str | None = None
    starttls: bool = False  # the client asked for STARTTLS
    tls: Tls | None = None  # the handshake completed
    mail_from: str | None = None
    rcpts: tuple[str, ...] = ()
    probe: str | None = None
    alias: str | None = None
    outcome: Outcome = Outcome.OPEN
    error: str | None = None
    chain: str | None = None  # which certificate chain was served

    @property
    def tied_by(self) -> Tie:
        """RCPT when it named the test in a recipient, SNI when it named it only in TLS;
        ADDRESS for a session without alias (a report ties it by client address, if at all)."""
        if self.alias is None:
            return Tie.ADDRESS
        return Tie.RCPT if self.rcpts else Tie.SNI


@dataclass(frozen=True)
class Delivery:
    """One accepted recipient of one message, committed before the 250."""

    alias: str
    probe: str
    received_at: float
    client_ip: str
    helo: str | None
    mail_from: str
    rcpt: str
    tls: Tls | None
    session_id: str | None = None
    size: int = 0
    message_id: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class Sent:
    """A test that received mail from `client_ip`; `first` is its first delivery from anyone."""

    alias: str
    client_ip: str
    created: float
    first: float

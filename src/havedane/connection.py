"""What the receiver learns about one connection while it is open, and how it ended.

`Draft` is the connection's own mutable scratch state; the store and everyone after it
see only the frozen `model.Session` it becomes (`Draft.session()`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from havedane.model import Outcome, Session, Tls


@dataclass
class Draft:
    """The session of an open connection, as far as it got."""

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
    rcpts: list[str] = field(default_factory=list)
    probe: str | None = None
    alias: str | None = None
    outcome: Outcome = Outcome.OPEN
    error: str | None = None
    chain: str | None = None  # which certificate chain was served
    delivered: int = 0  # recipients recorded in this connection (not stored: deliveries are)

    def session(self) -> Session:
        fields = {k: v for k, v in vars(self).items() if k != "delivered"}
        return Session(**{**fields, "rcpts": tuple(self.rcpts)})

    def ending(self, timed_out: bool) -> Outcome:
        """How the connection ended, when nothing decided it before (a handshake that
        failed, a shutdown): what it got as far as."""
        if self.outcome is not Outcome.OPEN:
            return self.outcome
        if self.delivered:
            return Outcome.DELIVERED
        if timed_out:
            return Outcome.TIMEOUT
        if self.mail_from is not None and self.rcpts:
            return Outcome.LEFT  # recipients accepted, message never completed
        if self.mail_from is not None:
            return Outcome.REJECTED
        if self.tls is not None:
            return Outcome.TLS_THEN_LEFT
        return Outcome.LEFT


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


def split(address: str) -> tuple[str, str]:
    """(local part, domain lowercased without a final dot)."""
    local, _, domain = address.rpartition("@")
    return local, domain.lower().rstrip(".")


def ip(addr: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 shown as IPv4."""
    try:
        parsed = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped:
        return str(parsed.ipv4_mapped)
    return str(parsed)

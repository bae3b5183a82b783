"""Decoding what Knot's mod-dnstap sends: one dnstap protobuf message (by `dnstap-pb`)
with the DNS message inside (by dnspython), and pairing each query with its response.

Knot logs a query (AUTH_QUERY) and its response (AUTH_RESPONSE) as two messages
(`log-queries`, `log-responses`). They are paired by resolver address, port,
transport, DNS message id and question: one stored row per query, with the query's
time and DO bit and the response's code. A query whose response does not follow
within PAIR_WAIT seconds is stored without a code; a response whose query was not
logged is stored on its own.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, replace

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from dnstap_pb import dnstap_pb2
from google.protobuf.message import DecodeError

from havedane.dns.queries import DnsQuery

PAIR_WAIT = 3.0  # seconds a query waits for its response (Knot answers in microseconds; frames come batched)
MAX_PENDING = 10_000  # queries waiting for their response; beyond, the oldest is stored without one
TRANSPORTS = {1: "udp", 2: "tcp", 3: "dot", 4: "doh", 5: "dnscrypt-udp", 6: "dnscrypt-tcp", 7: "doq"}
QUERY, RESPONSE = dnstap_pb2.Message.AUTH_QUERY, dnstap_pb2.Message.AUTH_RESPONSE


class Malformed(ValueError):
    """A data frame that is not a dnstap message of an authoritative server's query or response."""


@dataclass(frozen=True)
class Decoded:
    is_response: bool
    key: tuple[object, ...]  # what pairs a query with its response
    query: DnsQuery


def _address(raw: bytes) -> str:
    if len(raw) not in (4, 16):
        raise Malformed(f"address of {len(raw)} bytes")
    return str(ipaddress.ip_address(raw))


def _wire(wire: bytes) -> dns.message.Message:
    try:
        return dns.message.from_wire(wire, ignore_trailing=True)
    except dns.exception.DNSException:
        try:  # e.g. a TSIG we hold no key for: the question is still readable
            return dns.message.from_wire(wire, question_only=True)
        except dns.exception.DNSException as e:
            raise Malformed(f"DNS message: {e}") from None


def decode(payload: bytes) -> Decoded | None:
    """One data frame; None for a message of another kind (not an authoritative query or
    response, which Knot does not send). Raises Malformed."""
    tap = dnstap_pb2.Dnstap()
    try:
        tap.ParseFromString(payload)
    except (DecodeError, RuntimeWarning) as e:
        raise Malformed(f"not a dnstap message: {e}") from None
    if not tap.HasField("message"):
        raise Malformed("a dnstap frame without a message")
    m = tap.message
    if m.type not in (QUERY, RESPONSE):
        return None
    is_response = m.type == RESPONSE
    wire = m.response_message if is_response else m.query_message
    if not wire:
        raise Malformed("a message without its DNS wire bytes")
    msg = _wire(wire)
    if len(msg.question) != 1:
        raise Malformed(f"{len(msg.question)} questions")
    q = msg.question[0]
    if is_response:
        at = m.response_time_sec + m.response_time_nsec / 1e9
    else:
        at = m.query_time_sec + m.query_time_nsec / 1e9
    resolver = _address(m.query_address)
    transport = TRANSPORTS.get(m.socket_protocol, "unknown")
    qname = q.name.to_text(omit_final_dot=True).lower()
    qtype = dns.rdatatype.to_text(q.rdtype)
    query = DnsQuery(
        time=at or time.time(),
        resolver=resolver,
        transport=transport,
        qname=qname,
        qtype=qtype,
        dnssec_ok=bool(msg.ednsflags & dns.flags.DO),
        rcode=dns.rcode.to_text(msg.rcode()) if is_response else None,
        server=_address(m.response_address) if m.response_address else None,
    )
    return Decoded(is_response, (resolver, m.query_port, transport, msg.id, qname, qtype), query)


class Pairer:
    """Pairs each query with its response (one row per query)."""

    def __init__(self, wait: float = PAIR_WAIT, max_pending: int = MAX_PENDING) -> None:
        self.wait, self.max_pending = wait, max_pending
        self._pending: dict[tuple[object, ...], tuple[float, DnsQuery]] = {}  # insertion order = arrival

    def add(self, d: Decoded, now: float) -> list[DnsQuery]:
        if not d.is_response:
            out = []
            if d.key in self._pending:  # the same key again (a retry with the same id): the first stands alone
                out.append(self._pending.pop(d.key)[1])
            self._pending[d.key] = (now, d.query)
            while len(self._pending) > self.max_pending:
                out.append(self._pending.pop(next(iter(self._pending)))[1])
            return out
        pending = self._pending.pop(d.key, None)
        if pending is None:
            return [d.query]
        return [replace(pending[1], rcode=d.query.rcode)]

    def expire(self, now: float, everything: bool = False) -> list[DnsQuery]:
        out = []
        while self._pending:
            key = next(iter(self._pending))
            since, query = self._pending[key]
            if not everything and now - since < self.wait:
                break
            del self._pending[key]
            out.append(query)
        return out

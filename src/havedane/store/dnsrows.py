"""Rows of the dns_queries table (schema version 3), read back into DnsQuery values.

Both stores select DNS_COLUMNS in this order. A row without an alias is a zone-level
query (DNSKEY, DS, SOA, a probe host itself): tied to a test only by resolver address
and time, when read.
"""

from __future__ import annotations

from typing import Any

from havedane.dns.queries import DnsQuery

DNS_COLUMNS = "at, resolver, transport, qname, qtype, dnssec_ok, rcode, server, alias"


def dns_row(q: DnsQuery) -> tuple[Any, ...]:
    return (q.time, q.resolver, q.transport, q.qname, q.qtype, q.dnssec_ok, q.rcode, q.server, q.alias)


def dns_from_row(row: tuple[Any, ...]) -> DnsQuery:
    """A query from a row of `id, ` + DNS_COLUMNS."""
    return DnsQuery(
        id=row[0], time=row[1], resolver=row[2], transport=row[3], qname=row[4], qtype=row[5],
        dnssec_ok=bool(row[6]), rcode=row[7], server=row[8], alias=row[9],
    )  # fmt: skip


def admitted(batch: list[DnsQuery], stored: dict[str, int], tests: set[str], per_test: int) -> list[DnsQuery]:
    """Of `batch`, what the bounds let in: zone-level queries, and a test's queries while
    it exists and holds fewer than `per_test` (`stored`: how many each alias holds now).
    A query for an alias of no test (a guess, a test pruned) is not kept: it would be
    bounded by nothing."""
    out = []
    counts = dict(stored)
    for q in batch:
        if q.alias is None:
            out.append(q)
        elif q.alias in tests and counts.get(q.alias, 0) < per_test:
            counts[q.alias] = counts.get(q.alias, 0) + 1
            out.append(q)
    return out

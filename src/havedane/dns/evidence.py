"""What the authoritative side saw of one test, per resolver: the facts the diagnosis rests on.

Pure: the queries come from the store (report.load), tied to the test by the alias in
their names, plus the zone-level ones (DNSKEY, DS) from the same resolvers within the
test's window (dns.queries). What can be read from them was measured (docs/dns-evidence.md, "Per-test
names and dnstap"): a DANE sender behind a validating resolver fetches `_25._tcp.<host> TLSA`;
a DNSKEY fetch shows the resolver validates (its absence shows nothing: caches); the DO bit
is set by validating and non-validating resolvers alike (RFC 3225) and tells nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from havedane import probes
from havedane.dns.queries import ZONE_EVIDENCE, DnsQuery, probe_names, probe_of


@dataclass(frozen=True)
class ResolverFacts:
    """One address that asked for this test's names, and what it fetched."""

    address: str
    tlsa: tuple[str, ...]  # probes whose TLSA records it fetched, in catalogue order
    dnskey: bool  # it fetched the zone's DNSKEY (or a DS) during the test: tied by address and time
    dnssec_ok: bool  # the DO bit was set on its queries: reported, tells nothing
    queries: int  # how many of its queries are shown for this test
    first: float  # its first query for this test
    is_client: bool = False  # the address a session of this test came from: the mail server itself


@dataclass(frozen=True)
class DnsEvidence:
    """The test's DNS queries, oldest first. `available`: a dnstap feed is configured on this
    deployment, or queries were stored for the test (by a reader on another host)."""

    available: bool
    queries: tuple[DnsQuery, ...] = ()


def relevant(queries: Iterable[DnsQuery], named: dict[str, str]) -> list[DnsQuery]:
    """The test's own queries and the zone-level ones that are evidence: DNSKEY and DS, and
    a TLSA lookup of a probe at a fixed host (no alias in it). Oldest first."""
    kept = [q for q in queries if not q.zone_level or q.qtype in ZONE_EVIDENCE or tlsa_probe(q, named)]
    return sorted(kept, key=lambda q: (q.time, q.id or 0))


def tlsa_probe(q: DnsQuery, named: dict[str, str]) -> str | None:
    """The probe whose TLSA records the query fetched, or None."""
    return probe_of(q.qname, named) if q.qtype == "TLSA" else None


def resolvers(
    queries: Iterable[DnsQuery], enabled: tuple[probes.Probe, ...], domain: str, clients: Iterable[str] = ()
) -> tuple[ResolverFacts, ...]:
    """Every resolver that asked a name of this test, in the order they first asked.
    Zone-level queries count only for a resolver that did (the store reads them by address)."""
    named = probe_names(domain, enabled)
    order = [p.name for p in enabled]
    mine = relevant(queries, named)
    addresses = list(dict.fromkeys(q.resolver for q in mine if not q.zone_level))
    known = set(clients)
    facts = []
    for address in addresses:
        asked = [q for q in mine if q.resolver == address]
        fetched = {p for q in asked if (p := tlsa_probe(q, named))}
        facts.append(
            ResolverFacts(
                address=address,
                tlsa=tuple(n for n in order if n in fetched),
                dnskey=any(q.zone_level and q.qtype in ZONE_EVIDENCE for q in asked),
                dnssec_ok=any(q.dnssec_ok for q in asked),
                queries=len(asked),
                first=min(q.time for q in asked),
                is_client=address in known,
            )
        )
    return tuple(facts)

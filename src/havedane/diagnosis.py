"""What DNS shows about why a sender did what it did: facts and a finding, beside the verdict.

Pure. What can be read from the authoritative side was measured (docs/dns-evidence.md, "Per-test
names and dnstap"): a DANE sender behind a validating resolver fetches `_25._tcp.<host> TLSA`;
a DNSKEY fetch shows the resolver validates (its absence shows nothing: caches); a
non-DANE sender and a DANE sender behind a non-validating resolver both fetch no TLSA
(the MTA sees no AD bit and skips DANE, RFC 7672 §2.1.1), so they look alike from here;
the DO bit is set by validating and non-validating resolvers alike and tells nothing.
`wording.diagnosis` says it; no sentence is written here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from havedane.dns.evidence import DnsEvidence, ResolverFacts, resolvers
from havedane.dns.queries import DnsQuery
from havedane.probes import Probe


class Finding(enum.StrEnum):
    """What DNS shows (the API's `dns.finding`)."""

    NOT_AVAILABLE = "not-available"  # no dnstap feed on this deployment
    NO_QUERIES = "no-queries"  # a feed, but no query naming this test reached it
    SEEN = "seen"  # no verdict yet (pending, incomplete): only who asked for what
    FETCHED_AND_DELIVERED = "fetched-and-delivered"  # TLSA of a probe it wrongly delivered to was fetched
    FETCHED_ELSEWHERE = "fetched-elsewhere"  # TLSA fetched, but not of the probes it wrongly delivered to
    RESOLVER_VALIDATES = "resolver-validates"  # no TLSA fetched; that resolver fetched DNSKEY: DANE off in the MTA
    NO_TLSA_NO_DNSKEY = "no-tlsa-no-dnskey"  # DANE off in the MTA, or its resolver does not validate
    VALIDATES = "validates"  # validates: which resolver fetched which TLSA records
    VALIDATES_UNSEEN = "validates-unseen"  # validates, but no TLSA fetch reached us


@dataclass(frozen=True)
class DnsFacts:
    finding: Finding
    resolvers: tuple[ResolverFacts, ...] = ()  # who asked for this test's names, first asker first
    queries: tuple[DnsQuery, ...] = ()  # the queries shown, oldest first
    about: tuple[str, ...] = ()  # the classic probes it delivered to against DANE (plaintext, leaked)

    @property
    def available(self) -> bool:
        return self.finding is not Finding.NOT_AVAILABLE

    @property
    def fetched(self) -> tuple[str, ...]:
        """Probes whose TLSA records some resolver fetched (the first resolver's first)."""
        return tuple(dict.fromkeys(p for r in self.resolvers for p in r.tlsa))

    @property
    def validating(self) -> tuple[ResolverFacts, ...]:
        return tuple(r for r in self.resolvers if r.dnskey)


def dns_facts(
    about: tuple[str, ...],
    validated: bool,
    enabled: tuple[Probe, ...],
    domain: str,
    dns: DnsEvidence | None,
    clients: Iterable[str] = (),
) -> DnsFacts:
    """What DNS shows beside the verdict. `about`: the classic probes the sender delivered to
    against DANE (empty: it did not); `validated`: the verdict is that it validates; neither:
    no verdict yet. `clients`: the addresses the test's sessions came from."""
    if dns is None or not dns.available:
        return DnsFacts(Finding.NOT_AVAILABLE)
    asked = resolvers(dns.queries, enabled, domain, clients)
    return DnsFacts(finding(about, validated, asked), asked, dns.queries, about)


def finding(about: tuple[str, ...], validated: bool, asked: tuple[ResolverFacts, ...]) -> Finding:
    if not asked:
        return Finding.NO_QUERIES
    fetched = {p for r in asked for p in r.tlsa}
    if about:
        if fetched & set(about):
            return Finding.FETCHED_AND_DELIVERED
        if fetched:
            return Finding.FETCHED_ELSEWHERE
        return Finding.RESOLVER_VALIDATES if any(r.dnskey for r in asked) else Finding.NO_TLSA_NO_DNSKEY
    if validated:
        return Finding.VALIDATES if fetched else Finding.VALIDATES_UNSEEN
    return Finding.SEEN

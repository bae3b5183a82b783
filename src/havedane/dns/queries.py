"""DNS queries as the authoritative server saw them (from dnstap), and which test each is for.

Pure: the values come from havedane.dnstap (the I/O edge) and go to the store.
A query is tied to a test by the alias in its name: every name below a probe host
carries the test's alias as the label right below it (`_25._tcp.<alias>.do.<zone>`,
and the query-name-minimisation steps `_tcp.<alias>.do.<zone>`, `<alias>.do.<zone>`,
RFC 9156). Queries without one (DNSKEY, DS, SOA of the zone, the probe hosts
themselves) are zone-level: tied to a test later, by resolver address and time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from havedane import probes

# The alphabet of aliases (web.app.new_alias): a label of anything else is not a test.
ALIAS_LABEL = re.compile(r"[a-z0-9]{1,64}")
# Zone-level queries that are evidence about a resolver: a DNSKEY fetch shows it validates
# (RFC 4035 §5: a validator needs the zone's keys), DS likewise for a child zone. Other
# zone-level names (SOA, the probe hosts, query-name-minimisation steps) show nothing about
# one test, and from a shared resolver they may be anyone's.
ZONE_EVIDENCE = frozenset({"DNSKEY", "DS"})
TLSA_PREFIX = "_25._tcp."  # RFC 7672 §3: TLSA records of an SMTP server on port 25


@dataclass(frozen=True)
class DnsQuery:
    """One query received by an authoritative server, with its answer's code."""

    time: float  # when the query arrived (seconds since the epoch, UTC)
    resolver: str  # the address that asked: the sender's resolver, never the MTA itself
    transport: str  # "udp", "tcp", "dot", "doh"
    qname: str  # lower case, no trailing dot
    qtype: str  # "TLSA", "DNSKEY", ...
    dnssec_ok: bool  # the DO bit of EDNS (RFC 3225)
    rcode: str | None  # "NOERROR", "NXDOMAIN", ...; None: no response was seen
    server: str | None = None  # the name server's own address that answered (several may serve the zone)
    alias: str | None = None  # the test it names; None: zone-level
    id: int | None = None  # the store's row id, once stored

    @property
    def zone_level(self) -> bool:
        return self.alias is None


def probe_hosts(domain: str, enabled: Iterable[probes.Probe]) -> tuple[str, ...]:
    """The names right above an alias label: every probe's host and its separate TLS host."""
    hosts = {h.lower().rstrip(".") for p in enabled for h in (p.host(domain), p.tls_host(domain))}
    return tuple(sorted(hosts, key=len, reverse=True))  # the longest first: mxhost.x before x


def in_zone(qname: str, domain: str) -> bool:
    name, zone = qname.lower().rstrip("."), domain.lower().rstrip(".")
    return name == zone or name.endswith("." + zone)


def alias_of(qname: str, hosts: tuple[str, ...]) -> str | None:
    """The alias a query name carries (the label right below a probe host), or None
    for a zone-level name. `hosts` comes from probe_hosts()."""
    name = qname.lower().rstrip(".")
    for host in hosts:
        if name.endswith("." + host):
            label = name[: -len(host) - 1].rsplit(".", 1)[-1]
            return label if ALIAS_LABEL.fullmatch(label) else None
    return None


def tie(query: DnsQuery, hosts: tuple[str, ...]) -> DnsQuery:
    """The query with its alias set (None: zone-level)."""
    alias = alias_of(query.qname, hosts)
    return query if alias == query.alias else replace(query, alias=alias)


def probe_of(qname: str, named: dict[str, str]) -> str | None:
    """The probe whose TLSA records a query name asks for: `_25._tcp.<alias>.<host>` (the
    per-test name) or `_25._tcp.<host>` (a fixed TLS host). `named`: host -> probe name,
    from probe_names(). None: not a TLSA name of any probe."""
    name = qname.lower().rstrip(".")
    if not name.startswith(TLSA_PREFIX):
        return None
    rest = name[len(TLSA_PREFIX) :]
    if rest in named:
        return named[rest]
    label, _, host = rest.partition(".")
    return named.get(host) if ALIAS_LABEL.fullmatch(label) else None


def probe_names(domain: str, enabled: Iterable[probes.Probe]) -> dict[str, str]:
    """Host -> probe name, for every host a probe's TLSA records are looked up under."""
    return {p.tls_host(domain).lower().rstrip("."): p.name for p in enabled}

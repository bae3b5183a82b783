"""DNS records to publish for a deployment, their zone-file and JSON forms, and the
complete (optionally signed) zone for operators who host the base domain themselves.

Pure apart from the signing key, which lives in a file (see sign.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import pathlib
import time
from dataclasses import dataclass, field

import dns.zone
from cryptography import x509

from havedane import probes
from havedane.dns import sign as dnssec_sign
from havedane.dns import tlsa

TTL = 300
# SOA timers (RFC 1035 §3.3.13) for secondaries; the last is the negative-caching TTL
# (RFC 2308 §4), short so that a newly published probe name is seen within minutes.
SOA_TIMERS = "3600 900 1209600 300"


@dataclass(frozen=True)
class Record:
    name: str  # absolute, with the trailing dot
    type: str
    rdata: str
    ttl: int = TTL

    def zone_line(self) -> str:
        return f"{self.name:<40} {self.ttl:<6} IN {self.type:<5} {self.rdata}"


def address_records(name: str, addresses: list[str]) -> list[Record]:
    """A or AAAA for each address (ValueError for one that is not an IP address)."""
    return [Record(name, "AAAA" if ipaddress.ip_address(a).version == 6 else "A", a) for a in addresses]


def records(
    domain: str,
    enabled: tuple[probes.Probe, ...],
    leaves: list[x509.Certificate],
    ca: x509.Certificate,
    addresses: list[str],
    probe_leaves: dict[str, list[x509.Certificate]] | None = None,
    probe_addresses: dict[str, str] | None = None,
) -> list[Record]:
    """For every probe: its TLS host's A/AAAA, an MX (to itself, or to the probe's MX
    host), and the TLSA RRset at _25._tcp.<TLS host> (RFC 7672 §2.2: TLSA is looked up
    at the MX host's name). `probe_leaves` gives the leaves served to a probe with a
    chain of its own; `probe_addresses` a probe's own listener address."""
    out: list[Record] = []
    for probe in enabled:
        host = probe.host(domain) + "."
        tls_host = probe.tls_host(domain) + "."
        own = (probe_addresses or {}).get(probe.name)
        out.extend(address_records(tls_host, [own] if own else addresses))
        out.append(Record(host, "MX", f"10 {tls_host}"))
        served = (probe_leaves or {}).get(probe.name, leaves)
        for rec in tlsa.for_probe(probe, served, ca):
            out.append(Record(f"_25._tcp.{tls_host}", "TLSA", rec.rdata()))
    return out


def format_zone(recs: list[Record]) -> str:
    return "\n".join(r.zone_line() for r in recs) + "\n"


def format_json(recs: list[Record]) -> str:
    return json.dumps([{"name": r.name, "ttl": r.ttl, "type": r.type, "data": r.rdata} for r in recs], indent=2) + "\n"


@dataclass(frozen=True)
class ZoneOutput:
    text: str  # the complete zone file for the base domain
    ds: list[str] = field(default_factory=list)  # DS lines for the parent; empty when unsigned


def apex_records(domain: str, addresses: list[str], serial: int) -> list[Record]:
    """SOA and NS of the base domain, the name server's addresses, and the base
    domain's own addresses (the web site). The name server is ns.<domain>, served
    from the same addresses: the one-host deployment answers DNS itself."""
    apex = domain.rstrip(".").lower() + "."
    ns = f"ns.{apex}"
    return [
        Record(apex, "SOA", f"{ns} hostmaster.{apex} {serial} {SOA_TIMERS}"),
        Record(apex, "NS", ns),
        *address_records(apex, addresses),
        *address_records(ns, addresses),
    ]


def to_zone(domain: str, recs: list[Record]) -> dns.zone.Zone:
    """The records as a dnspython zone (which also checks that they parse)."""
    return dns.zone.from_text(format_zone(recs), origin=domain.rstrip(".") + ".", relativize=False)


def _header(domain: str, signed_at: datetime.datetime | None) -> str:
    lines = [f"; zone {domain.rstrip('.')}. written by `havedane zone`"]
    if signed_at is not None:
        until = signed_at + dnssec_sign.LIFETIME
        lines.append(f"; DNSSEC: ECDSA P-256 (algorithm 13), NSEC; signatures expire {until:%Y-%m-%d %H:%M} UTC:")
        lines.append("; run `havedane zone --sign` again well before then (e.g. weekly from cron)")
    return "\n".join(lines) + "\n"


def build_zone(
    domain: str,
    enabled: tuple[probes.Probe, ...],
    leaves: list[x509.Certificate],
    ca: x509.Certificate,
    addresses: list[str],
    key_dir: pathlib.Path,
    sign: bool,
    serial: int | None = None,
) -> ZoneOutput:
    """The complete zone for `domain`: apex records plus every record of `records()`.

    With `sign`, the zone is signed with the key kept in key_dir (made on first use)
    and the DS for the parent is returned. The serial defaults to the Unix time, which
    grows with every run (RFC 1982 arithmetic holds until 2106) so secondaries and
    caches see each re-signing as a new version.
    """
    if not addresses:
        raise ValueError("the zone needs at least one address for its name server and probe hosts (--address IP)")
    serial = int(time.time()) if serial is None else serial
    recs = apex_records(domain, addresses, serial) + records(domain, enabled, leaves, ca, addresses)
    zone = to_zone(domain, recs)
    if not sign:
        return ZoneOutput(_header(domain, None) + zone_text(zone))
    key = dnssec_sign.load_or_create_key(key_dir, domain)
    now = datetime.datetime.now(datetime.UTC)
    dnssec_sign.sign(zone, key, now)
    return ZoneOutput(_header(domain, now) + zone_text(zone), dnssec_sign.ds_lines(domain, key, TTL))


def zone_text(zone: dns.zone.Zone) -> str:
    """Master-file text with absolute names, in canonical order (RFC 4034 §6.1)."""
    return zone.to_text(sorted=True, relativize=False, want_origin=False)

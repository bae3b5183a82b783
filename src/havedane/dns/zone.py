"""DNS records to publish for a deployment, and their zone-file and JSON forms.

Pure: configuration and certificates in, records out.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from cryptography import x509

from havedane import probes
from havedane.dns import tlsa

TTL = 300


@dataclass(frozen=True)
class Record:
    name: str  # absolute, with the trailing dot
    type: str
    rdata: str
    ttl: int = TTL

    def zone_line(self) -> str:
        return f"{self.name:<40} {self.ttl:<6} IN {self.type:<5} {self.rdata}"


def records(
    domain: str,
    enabled: tuple[probes.Probe, ...],
    leaves: list[x509.Certificate],
    ca: x509.Certificate,
    addresses: list[str],
) -> list[Record]:
    """A/AAAA and a self-referencing MX for every probe host, and its TLSA RRset
    at _25._tcp.<host> (RFC 7672 §2.2: TLSA is looked up at the MX host's name)."""
    out: list[Record] = []
    for probe in enabled:
        host = probe.host(domain) + "."
        for addr in addresses:
            rtype = "AAAA" if ipaddress.ip_address(addr).version == 6 else "A"
            out.append(Record(host, rtype, addr))
        out.append(Record(host, "MX", f"10 {host}"))
        for rec in tlsa.for_probe(probe, leaves, ca):
            out.append(Record(f"_25._tcp.{host}", "TLSA", rec.rdata()))
    return out


def format_zone(recs: list[Record]) -> str:
    return "\n".join(r.zone_line() for r in recs) + "\n"


def format_json(recs: list[Record]) -> str:
    return json.dumps([{"name": r.name, "ttl": r.ttl, "type": r.type, "data": r.rdata} for r in recs], indent=2) + "\n"

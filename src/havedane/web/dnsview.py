"""The DNS queries of a test as timeline rows, laid out from the report's JSON (`dns.queries`).

The diagnosis in words comes with the JSON (`dns.lead`, `dns.details`: `wording.diagnosis`);
this module only turns each query's typed fields into a row. A resolver asks again on
timeouts and for each transport, so repeats of one question by one resolver make one row
with a count: the timeline stays readable, and the JSON keeps every query shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ZONE_TIED = "DNS query for our zone (tied to this test by the resolver's address and the time)"
TIED = "DNS query"


@dataclass(frozen=True)
class DnsRow:
    at: str  # ISO 8601, UTC: the first time this question was asked
    host: str | None  # the probe host whose TLSA records were asked for
    text: str
    facts: list[tuple[str, str]]


def rows(r: dict[str, Any]) -> list[DnsRow]:
    """One row per (resolver, name, type), at its first query, oldest first."""
    queries = r.get("dns", {}).get("queries", [])
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for q in queries:
        groups.setdefault((q["resolver"], q["qname"], q["qtype"]), []).append(q)
    out = [row(r, group) for group in groups.values()]
    return sorted(out, key=lambda d: d.at)


def row(r: dict[str, Any], group: list[dict[str, Any]]) -> DnsRow:
    first = min(group, key=lambda q: q["time"])
    probe = first["tlsa_probe"]
    facts = [
        ("from", first["resolver"]),
        ("asked", f"{first['qtype']} {first['qname']}"),
        ("answer", first["rcode"] or "none seen"),
        ("DO bit", "set" if first["dnssec_ok"] else "not set"),
    ]
    if len(group) > 1:
        facts.append(("seen", f"{len(group)} times"))
    host = r["probes"][probe]["host"] if probe in r["probes"] else None
    return DnsRow(first["time"], host, ZONE_TIED if first["zone_level"] else TIED, facts)

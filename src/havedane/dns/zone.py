"""DNS records to publish for a deployment, their zone-file and JSON forms, and the
complete (optionally signed) zone for operators who host the base domain themselves.

Pure: the signing keys come in as values (the files they live in are
havedane.zonekeys's business), the zone text goes out as a string.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import dns.name
import dns.rdatatype
import dns.zone
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

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
    """For every probe, once for all tests: wildcard records at `*.<probe>.<domain>`
    (RFC 4592), so that every test's host `<alias>.<probe>.<domain>` exists. The wildcard
    holds A/AAAA and the TLSA RRset itself: a query for `_25._tcp.<alias>.<probe>.<domain>`
    is answered from it too (its closest encloser is `<probe>.<domain>`). No MX: a sender
    then delivers to the host's own address (RFC 5321 §5.1), and looks TLSA up there
    (RFC 7672 §2.2.1). A probe with an MX host of its own gets `*.<probe> MX` to it, and
    the addresses and TLSA there (RFC 7672 §2.2.2). `probe_leaves` gives the leaves served
    to a probe with a chain of its own; `probe_addresses` a probe's own listener address."""
    out: list[Record] = []
    for probe in enabled:
        tls_name = probe.tls_name(domain) + "."
        own = (probe_addresses or {}).get(probe.name)
        for pref, host in probe.mx_records(domain):
            out.append(Record(probe.wildcard(domain) + ".", "MX", f"{pref} {host}."))
        out.extend(address_records(tls_name, [own] if own else addresses))
        served = (probe_leaves or {}).get(probe.name, leaves)
        for rec in tlsa.for_probe(probe, served, ca):
            out.append(Record(probe.tlsa_owner(domain) + ".", "TLSA", rec.rdata()))
        first = probe.first_mx_host(domain)
        if first:  # the MX host to skip: same certificate, TLSA that match none of it
            out.extend(address_records(first + ".", [own] if own else addresses))
            for rec in tlsa.for_probe(probe, served, ca):
                out.append(Record(f"_25._tcp.{first}.", "TLSA", tlsa.mismatch(rec).rdata()))
        if probe.zone is probes.Zone.BOGUS_DENIAL:
            # A name without TLSA: its NODATA proof is the one NSEC3 matching it (RFC 5155
            # §7.2.3), used by no other lookup, so breaking its signature breaks only that.
            out.append(Record(probe.tlsa_owner(domain) + ".", "TXT", f'"{DENIAL_PLACEHOLDER}"'))
    return out


DENIAL_PLACEHOLDER = "no TLSA here; the signed proof of that is broken on purpose (havedane probe denial-bogus)"


def format_zone(recs: list[Record]) -> str:
    return "\n".join(r.zone_line() for r in recs) + "\n"


def format_json(recs: list[Record]) -> str:
    return json.dumps([{"name": r.name, "ttl": r.ttl, "type": r.type, "data": r.rdata} for r in recs], indent=2) + "\n"


@dataclass(frozen=True)
class ZoneOutput:
    text: str  # the complete zone file for the base domain
    ds: list[str] = field(default_factory=list)  # DS lines for the parent; empty when unsigned
    # Child zones of probes that need a zone cut (probes.Zone.BOGUS / UNSIGNED), by zone
    # name: each is a zone file of its own, served by the same name server.
    children: dict[str, str] = field(default_factory=dict)
    # The zones (by name) whose every signature is valid: the signed base zone. Not the
    # `bogus` child (broken on purpose) nor the `unsigned` one, nor anything unsigned.
    validated: frozenset[str] = frozenset()


def soa_ns(apex: str, ns: str, serial: int) -> list[Record]:
    """SOA and NS of a zone served by `ns`; mail about it goes to hostmaster@ the name
    server's domain (the base domain, for its child zones too)."""
    rname = "hostmaster." + ns.split(".", 1)[1]
    return [Record(apex, "SOA", f"{ns} {rname} {serial} {SOA_TIMERS}"), Record(apex, "NS", ns)]


def apex_records(domain: str, addresses: list[str], serial: int) -> list[Record]:
    """SOA and NS of the base domain, the name server's addresses, and the base
    domain's own addresses (the web site). The name server is ns.<domain>, served
    from the same addresses: the one-host deployment answers DNS itself."""
    apex = domain.rstrip(".").lower() + "."
    ns = f"ns.{apex}"
    return [*soa_ns(apex, ns, serial), *address_records(apex, addresses), *address_records(ns, addresses)]


def to_zone(domain: str, recs: list[Record]) -> dns.zone.Zone:
    """The records as a dnspython zone (which also checks that they parse)."""
    return dns.zone.from_text(format_zone(recs), origin=domain.rstrip(".") + ".", relativize=False)


def _header(domain: str, signed_at: datetime.datetime | None, note: str = "") -> str:
    lines = [f"; zone {domain.rstrip('.')}. written by `havedane zone`"]
    if signed_at is not None:
        until = signed_at + dnssec_sign.LIFETIME
        lines.append(
            f"; DNSSEC: ECDSA P-256 (algorithm 13), NSEC3 (no salt, 0 iterations, RFC 9276);"
            f" signatures expire {until:%Y-%m-%d %H:%M} UTC:"
        )
        lines.append("; run `havedane zone --sign` again well before then (e.g. weekly from cron)")
    if note:
        lines.append(f"; {note}")
    return "\n".join(lines) + "\n"


def _split(
    domain: str, enabled: tuple[probes.Probe, ...], recs: list[Record]
) -> tuple[list[Record], dict[probes.Probe, list[Record]]]:
    """The records of the base zone, and those below each probe's zone cut."""
    cuts = {p: dns.name.from_text(p.zone_apex(domain)) for p in enabled if p.zone is not probes.Zone.PARENT}
    children: dict[probes.Probe, list[Record]] = {p: [] for p in cuts}
    parent: list[Record] = []
    for rec in recs:
        owner = dns.name.from_text(rec.name)
        below = [p for p, cut in cuts.items() if owner.is_subdomain(cut)]
        (children[below[0]] if below else parent).append(rec)
    return parent, children


def _child(
    probe: probes.Probe,
    domain: str,
    recs: list[Record],
    serial: int,
    keys: Mapping[str, ec.EllipticCurvePrivateKey] | None,
    now: datetime.datetime,
) -> tuple[str, list[Record]]:
    """A probe's child zone, and the delegation the parent needs for it: NS, plus DS
    when the child is signed (RFC 4035 §2.4). `bogus` is signed with a key of its own
    and a broken TLSA signature, `denial-bogus` (cut at its MX host) with a broken
    signature over the NSEC3 that proves no TLSA; `unsigned` gets no DS, which the parent's signed NSEC3
    proves (RFC 5155 §8.9: an insecure delegation)."""
    apex, ns = probe.zone_apex(domain) + ".", f"ns.{domain.rstrip('.')}."
    zone = to_zone(apex, soa_ns(apex, ns, serial) + recs)
    delegation = [Record(apex, "NS", ns)]
    if keys is None or probe.zone not in SIGNED_CHILDREN:
        return _header(apex, None) + zone_text(zone), delegation
    key = _key(keys, apex)
    if probe.zone is probes.Zone.BOGUS:
        dnssec_sign.sign(zone, key, now, corrupt=frozenset({dns.rdatatype.TLSA}))
        note = "the TLSA signature is broken on purpose (probe `bogus`): leave it so"
    else:
        owner = dns.name.from_text(probe.tlsa_owner(domain))
        dnssec_sign.sign(zone, key, now, corrupt_denial=frozenset({owner}))
        note = f"the signature of the NSEC3 of {owner} is broken on purpose (probe `{probe.name}`): leave it so"
    return _header(apex, now, note) + zone_text(zone), [*delegation, Record(apex, "DS", dnssec_sign.ds(apex, key))]


def signed_zones(domain: str, enabled: tuple[probes.Probe, ...]) -> list[str]:
    """The zones `build_zone` signs, each with a key of its own: the base domain and
    the `bogus` probe's child zone (RFC 4035 §2.4: its DS in the parent)."""
    bogus = [p.zone_apex(domain) for p in enabled if p.zone in SIGNED_CHILDREN]
    return [_zone_name(name) for name in (domain, *bogus)]


# The child zones that are signed (with a key of their own, DS in the parent), each
# with one signature broken on purpose.
SIGNED_CHILDREN = frozenset({probes.Zone.BOGUS, probes.Zone.BOGUS_DENIAL})


def _zone_name(name: str) -> str:
    return name.rstrip(".").lower()


def _key(keys: Mapping[str, ec.EllipticCurvePrivateKey], zone: str) -> ec.EllipticCurvePrivateKey:
    try:
        return keys[_zone_name(zone)]
    except KeyError:
        raise ValueError(f"no signing key for the zone {_zone_name(zone)} (see signed_zones)") from None


def build_zone(
    domain: str,
    enabled: tuple[probes.Probe, ...],
    leaves: list[x509.Certificate],
    ca: x509.Certificate,
    addresses: list[str],
    *,
    keys: Mapping[str, ec.EllipticCurvePrivateKey] | None = None,
    serial: int | None = None,
    probe_leaves: dict[str, list[x509.Certificate]] | None = None,
    probe_addresses: dict[str, str] | None = None,
) -> ZoneOutput:
    """The complete zone for `domain`: apex records plus every record of `records()`
    (to which `probe_leaves` and `probe_addresses` are passed), with the records of
    probes that live in a child zone moved there.

    With `keys` (zone name -> key, for every zone of `signed_zones`), the zones are
    signed and the DS for the parent is returned. The serial defaults to the Unix time, which
    grows with every run (RFC 1982 arithmetic holds until 2106) so secondaries and
    caches see each re-signing as a new version.
    """
    if not addresses:
        raise ValueError("the zone needs at least one address for its name server and probe hosts (--address IP)")
    serial = int(time.time()) if serial is None else serial
    now = datetime.datetime.now(datetime.UTC)
    recs = records(domain, enabled, leaves, ca, addresses, probe_leaves, probe_addresses)
    parent, below = _split(domain, enabled, recs)
    children: dict[str, str] = {}
    for probe, child_recs in below.items():
        children[probe.zone_apex(domain)], delegation = _child(probe, domain, child_recs, serial, keys, now)
        parent += delegation
    zone = to_zone(domain, apex_records(domain, addresses, serial) + parent)
    if keys is None:
        return ZoneOutput(_header(domain, None) + zone_text(zone), children=children)
    key = _key(keys, domain)
    dnssec_sign.sign(zone, key, now)
    text = _header(domain, now) + zone_text(zone)
    return ZoneOutput(text, dnssec_sign.ds_lines(domain, key, TTL), children, frozenset({domain.rstrip(".")}))


def zone_text(zone: dns.zone.Zone) -> str:
    """Master-file text with absolute names, in canonical order (RFC 4034 §6.1)."""
    return zone.to_text(sorted=True, relativize=False, want_origin=False)


def knot_conf(
    files: Mapping[str, str], validated: frozenset[str], listen: str = "0.0.0.0@53", dnstap_socket: str | None = None
) -> str:
    """A sample Knot DNS configuration that serves `files` (zone name -> zone file)
    exactly as havedane wrote them: Knot must not sign (the zones are signed already).

    Knot checks the signatures on load (`dnssec-validation`) only of the zones in
    `validated`: Knot 3.2 refuses to load a zone it validates that has no DNSKEY ("no
    keys for signing") or a signature that fails, and then answers SERVFAIL for it, so
    the `unsigned` child (no keys by design), the `bogus` one (broken on purpose) and an
    unsigned base zone are served unchecked.

    With `dnstap_socket`, Knot's mod-dnstap streams every query and response to the
    havedane reader listening there (`serve --role dns`): the DNS evidence of tests."""
    zones = []
    for name, path in files.items():
        check = "on" if name.rstrip(".") in {v.rstrip(".") for v in validated} else "off"
        zones.append(f'  - domain: {name.rstrip(".")}\n    file: "{path}"\n    dnssec-validation: {check}\n')
    return (
        "# Knot DNS: serve havedane's zones as written (`havedane zone --sign --knot-conf FILE`).\n"
        "# Re-run `havedane zone --sign` before the signatures expire, then `knotc reload`.\n"
        "server:\n"
        f"    listen: {listen}\n"
        + (
            f'mod-dnstap:\n  - id: tap\n    sink: "unix:{dnstap_socket}"\n    log-queries: on\n    log-responses: on\n'
            if dnstap_socket
            else ""
        )
        + "template:\n"
        "  - id: default\n"
        + ("    global-module: mod-dnstap/tap\n" if dnstap_socket else "")
        + "    dnssec-signing: off\n"
        "    zonefile-load: whole\n"
        "    journal-content: none\n"
        "    zonefile-sync: -1\n"
        "zone:\n" + "".join(zones)
    )

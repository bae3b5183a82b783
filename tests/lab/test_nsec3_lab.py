"""Zone shape for evidence: with the NSEC3 zone `havedane zone --sign` writes, every
new name a validating resolver is asked for reaches the authoritative server; with
an NSEC zone, Unbound answers the second new name on its own from the proof it
cached for the first (aggressive use of the cache, RFC 8198 §4, on by default).
Counted from dnstap at Knot, a query reaching it or not."""

from __future__ import annotations

import secrets

import dns.name

from . import dnsservers, world, zones


def new_names(lab: world.World) -> list[str]:
    """Two names nobody asked for yet under one probe host (the NSEC zone has one NSEC
    covering everything below `dont`, which has no names of its own)."""
    return [f"t{secrets.token_hex(6)}.dont.{lab.zone}" for _ in range(2)]


def reaching_knot(lab: world.World, tag: str, zone_text: str, names: list[str]) -> list[int]:
    """Ask the validating resolver for each name in turn (each answer authenticated),
    then count the queries for it that Knot received."""
    with world.alternate_dns(lab, tag, zone_text, validation=True, dnstap=True):
        for name in names:
            answer = dnsservers.query(lab.ns, world.ALT_RESOLVER, name, "A")
            assert answer.rcode in ("NXDOMAIN", "NOERROR") and answer.ad, (name, answer)
    tap = (lab.dir / f"dns-{tag}" / "knot" / dnsservers.DNSTAP_FILE).read_bytes()
    assert tap.count(dns.name.from_text(lab.zone).to_wire()) > 0, "lab: no query of the zone in the dnstap file"
    # A query frame carries the query message, whose question holds the name uncompressed.
    return [tap.count(dns.name.from_text(name).to_wire()) for name in names]


def test_every_new_name_reaches_knot_with_nsec3(lab: world.World) -> None:
    names = new_names(lab)
    first, second = reaching_knot(lab, "nsec3", lab.zone_text, names)
    assert first >= 1 and second >= 1, (names, first, second)


def test_with_nsec_the_resolver_answers_the_second_new_name_itself(lab: world.World) -> None:
    """The control: the same zone signed with NSEC. Without it the test above could
    pass for another reason (no cache at all, say)."""
    names = new_names(lab)
    first, second = reaching_knot(lab, "nsec", zones.nsec_signed(lab.config, lab.zone_text), names)
    assert first >= 1 and second == 0, (names, first, second)

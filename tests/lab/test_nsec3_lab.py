"""Zone shape for evidence: with the NSEC3 zone `havedane zone --sign` writes, every
new name a validating resolver is asked for reaches the authoritative server; with
an NSEC zone, Unbound answers the second new name on its own from the proof it
cached for the first (aggressive use of the cache, RFC 8198 §4, on by default).
Counted from dnstap at Knot, a query reaching it or not."""

from __future__ import annotations

import secrets
import time

import dns.name
import dns.rdataclass
import dns.rdatatype

from havedane.dns import sign

from . import dnsservers, world, zones


def new_names(lab: world.World) -> list[str]:
    """Two test hosts nobody asked for yet under one probe, as new tests' are: both answered
    by the wildcard *.dont.<zone> (with NSEC, its proof that no closer name exists covers
    every such name, RFC 8198 §5.3)."""
    return [f"t{secrets.token_hex(6)}.dont.{lab.zone}" for _ in range(2)]


def reaching_knot(lab: world.World, tag: str, zone_text: str, names: list[str], pause: float = 0) -> bytes:
    """Ask the validating resolver for each name in turn (each answer authenticated,
    `pause` seconds apart); the dnstap frames of the queries Knot received."""
    with world.alternate_dns(lab, tag, zone_text, validation=True, dnstap=True):
        for i, name in enumerate(names):
            time.sleep(pause if i else 0)
            answer = dnsservers.query(lab.ns, world.ALT_RESOLVER, name, "A")
            assert answer.rcode in ("NXDOMAIN", "NOERROR") and answer.ad, (name, answer)
    tap = (lab.dir / f"dns-{tag}" / "knot" / dnsservers.DNSTAP_FILE).read_bytes()
    assert tap.count(dns.name.from_text(lab.zone).to_wire()) > 0, "lab: no query of the zone in the dnstap file"
    return tap


def asked(tap: bytes, name: str, rdtype: str = "A") -> int:
    """How many queries for (name, type) are in the frames: a query frame carries the
    query message, whose question holds the name uncompressed, then type and class."""
    question = dns.name.from_text(name).to_wire() + dns.rdatatype.from_text(rdtype).to_bytes(2, "big")
    return tap.count(question + dns.rdataclass.IN.to_bytes(2, "big"))


def test_every_new_name_reaches_knot_with_nsec3(lab: world.World) -> None:
    names = new_names(lab)
    tap = reaching_knot(lab, "nsec3", lab.zone_text, names)
    first, second = (asked(tap, name) for name in names)
    assert first >= 1 and second >= 1, (names, first, second)


def test_the_resolver_fetches_the_dnskey_again_once_its_ttl_ran_out(lab: world.World) -> None:
    """What the short DNSKEY TTL buys: a test that comes DNSKEY_TTL seconds after the
    last lookup through a resolver sees that resolver fetch the DNSKEY again (the sign
    that it validates); one that comes sooner sees none."""
    # Unbound fetches the DNSKEY to validate its first answer (while it starts, see
    # dnsservers.unbound); the names asked for right after it need no new fetch ...
    names = new_names(lab)
    tap = reaching_knot(lab, "dnskey-soon", lab.zone_text, names)
    assert asked(tap, lab.zone, "DNSKEY") == 1 and all(asked(tap, name) for name in names), names
    # ... the second name asked for DNSKEY_TTL + 1 s later does (Unbound may ask more
    # than once when the key ran out: 3 DNSKEY queries in all in one run, not explained).
    names = new_names(lab)
    tap = reaching_knot(lab, "dnskey-later", lab.zone_text, names, pause=sign.DNSKEY_TTL + 1)
    assert asked(tap, lab.zone, "DNSKEY") >= 2 and all(asked(tap, name) for name in names), names


def test_with_nsec_the_resolver_answers_the_second_new_name_itself(lab: world.World) -> None:
    """The control: the same zone signed with NSEC. Without it the test above could
    pass for another reason (no cache at all, say)."""
    names = new_names(lab)
    tap = reaching_knot(lab, "nsec", zones.nsec_signed(lab.config, lab.zone_text), names)
    first, second = (asked(tap, name) for name in names)
    assert first >= 1 and second == 0, (names, first, second)

"""The verdict, proven on real mail servers: Postfix that validates DANE and Postfix
that does not, sending through a real validating resolver to `havedane serve`, with
the zone `havedane zone --sign` wrote served by Knot (RFC 7672 §2.2, §3.1)."""

from __future__ import annotations

from typing import Any

import pytest

from . import dnsservers, world, zones
from .netns import wait_until
from .postfix import Postfix

pytestmark = pytest.mark.lab


def new_test(lab: world.World) -> dict[str, Any]:
    r = lab.api("POST", "/api/tests")
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert set(body["addresses"]) >= {"do", "dont", "wrong"}
    return body


def settled(lab: world.World, alias: str, timeout: float = 30) -> dict[str, Any]:
    """The test's state once the verdict is no longer pending (grace is 5 s in the lab)."""

    def verdict() -> dict[str, Any] | None:
        r = lab.api("GET", f"/api/tests/{alias}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if body["verdict"]["code"] != "pending" else None

    return wait_until(verdict, timeout, f"a verdict for {alias}", interval=0.25)


def send_one(lab: world.World, sender: Postfix, test: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """One message to the test's three addresses through `sender`; returns the final
    state at the receiver and what the sender logged meanwhile."""
    addresses = test["addresses"]
    rcpts = [addresses[p] for p in ("do", "dont", "wrong")]
    sent = sender.send(f"postmaster@{sender.name}.sender.test", rcpts, f"havedane lab: {sender.name}")
    try:
        sender.wait_outcomes(sent, len(rcpts))
        return settled(lab, test["alias"]), sender.log(sent.log_offset)
    finally:
        sender.delete_deferred()


def test_zone_is_signed_by_havedane_and_validated(lab: world.World) -> None:
    # Knot checked every signature and the NSEC3 chain when it loaded the file.
    assert "DNSSEC, validation successful" in (lab.dir / "knot" / "knotd.log").read_text()
    tlsa = lab.query(f"_25._tcp.do.{lab.zone}", "TLSA")
    assert (tlsa.rcode, tlsa.ad) == ("NOERROR", True)
    assert any(" TLSA 3 1 1 " in rrset for rrset in tlsa.rrsets)
    # dont: no TLSA, and the resolver proves it (NSEC3, RFC 7672 §2.2).
    none = lab.query(f"_25._tcp.dont.{lab.zone}", "TLSA")
    assert (none.rcode, none.ad) == ("NXDOMAIN", True)


def test_dane_postfix_validates(lab: world.World) -> None:
    test = new_test(lab)
    state, log = send_one(lab, lab.dane, test)
    zone, probes = lab.zone, state["probes"]

    assert state["verdict"]["code"] == "validates", state["verdict"]
    [do] = probes["do"]["deliveries"]
    assert do["client_ip"] == world.DANE_SENDER
    assert do["tls"] is not None and do["tls"]["sni"] == f"do.{zone}"
    assert probes["dont"]["status"] == "delivered"
    assert probes["dont"]["deliveries"][0]["tls"] is not None

    wrong = probes["wrong"]
    assert wrong["status"] in ("refused", "not-delivered") and wrong["deliveries"] == []
    # The evidence: a session from this sender that completed TLS for wrong.<zone>
    # and left without MAIL (Postfix sends QUIT after the failed DANE check).
    refusals = [
        s
        for s in wrong["sessions"]
        if s["client_ip"] == world.DANE_SENDER
        and s["tls"] is not None
        and s["tls"]["sni"] == f"wrong.{zone}"
        and s["mail_from"] is None
    ]
    assert refusals and refusals[0]["outcome"] == "tls-then-left", wrong["sessions"]

    assert f"Verified TLS connection established to do.{zone}[" in log, log
    [deferred] = [line for line in log.splitlines() if f"@wrong.{zone}>" in line and "status=" in line]
    assert "dsn=4.7.5" in deferred and "status=deferred" in deferred, deferred


def test_plain_postfix_does_not_validate(lab: world.World) -> None:
    test = new_test(lab)
    state, log = send_one(lab, lab.plain, test)
    probes = state["probes"]

    assert state["verdict"]["code"] == "does-not-validate", state["verdict"]
    assert probes["wrong"]["status"] == "delivered"
    for name in ("do", "dont", "wrong"):
        [delivery] = probes[name]["deliveries"]
        assert delivery["client_ip"] == world.PLAIN_SENDER
        # `may` encrypts but authenticates nothing, and so names no server (no SNI).
        assert delivery["tls"] is not None and delivery["tls"]["sni"] is None
    assert f"@wrong.{lab.zone}>" in log and "Verified TLS" not in log


def test_posttls_finger_matches_ee_and_rejects_wrong(lab: world.World) -> None:
    do = lab.dane.finger(f"do.{lab.zone}")
    assert "Matched DANE EE certificate at depth 0: 3 1 1 " in do, do
    assert f"Verified TLS connection established to do.{lab.zone}[" in do, do

    wrong = lab.dane.finger(f"wrong.{lab.zone}")
    assert "no matching DANE TLSA records" in wrong, wrong
    assert "Verified TLS" not in wrong and "Matched DANE" not in wrong, wrong


def test_posttls_finger_matches_the_ca_as_trust_anchor(lab: world.World) -> None:
    # The published set has 3 1 1 too, and OpenSSL reports the EE match first; with
    # only the CA's 2 1 1 the chain must be built up to our CA (and name-checked).
    variant = zones.ta_only(lab.config, "do", world.RECEIVER)
    with world.alternate_dns(lab, "ta", variant, validation=True) as resolv_conf:
        out = lab.dane.finger(f"do.{lab.zone}", resolv_conf)
    assert "Matched DANE TA certificate at depth 1: 2 1 1 " in out, out
    assert f"Verified TLS connection established to do.{lab.zone}[" in out, out


def test_corrupted_signature_is_servfail(lab: world.World) -> None:
    owner = f"_25._tcp.do.{lab.zone}."
    variant = zones.corrupt_signature(lab.zone_text, lab.zone, owner, "TLSA")
    with world.alternate_dns(lab, "bogus", variant, validation=False) as resolv_conf:
        bogus = dnsservers.query(lab.ns, world.ALT_RESOLVER, owner, "TLSA")
        unchecked = dnsservers.query(lab.ns, world.ALT_RESOLVER, owner, "TLSA", checking_disabled=True)
        host = dnsservers.query(lab.ns, world.ALT_RESOLVER, f"do.{lab.zone}", "A")
        finger = lab.dane.finger(f"do.{lab.zone}", resolv_conf)
    assert bogus.rcode == "SERVFAIL"
    # The data is there (CD: no validation); only its signature is wrong, and only it.
    assert unchecked.rcode == "NOERROR" and unchecked.rrsets
    assert (host.rcode, host.ad) == ("NOERROR", True)
    # A DANE sender does not fall back to unauthenticated TLS: it stops (RFC 7672 §2.1.1).
    assert "TLSA lookup error" in finger, finger

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
    # A test's TLSA RRset, synthesised from the signed wildcard *.do.<zone> (RFC 4592),
    # validated by Unbound: its RRSIG counts 3 labels, those of *.do.<zone> without the *.
    tlsa = lab.query(f"_25._tcp.{world.fresh_host('do')}", "TLSA")
    assert (tlsa.rcode, tlsa.ad) == ("NOERROR", True)
    assert any(" TLSA 3 1 1 " in rrset for rrset in tlsa.rrsets)
    [rrsig] = [rrset for rrset in tlsa.rrsets if " RRSIG TLSA " in rrset]
    assert rrsig.split(" RRSIG TLSA ", 1)[1].split()[:2] == ["13", "3"], rrsig  # algorithm, labels
    # dont: no TLSA at a test's host, and the resolver proves it (NSEC3, RFC 7672 §2.2).
    none = lab.query(f"_25._tcp.{world.fresh_host('dont')}", "TLSA")
    assert (none.rcode, none.ad, none.rrsets) == ("NOERROR", True, [])
    # No MX: the sender uses the host's own address (RFC 5321 §5.1), proven absent.
    host = world.fresh_host("do")
    mx, a = lab.query(host, "MX"), lab.query(host, "A")
    assert (mx.rcode, mx.ad, mx.rrsets) == ("NOERROR", True, [])
    assert (a.rcode, a.ad) == ("NOERROR", True) and any(world.RECEIVER in r for r in a.rrsets)


def test_dane_postfix_validates(lab: world.World) -> None:
    test = new_test(lab)
    state, log = send_one(lab, lab.dane, test)
    zone, probes = lab.zone, state["probes"]

    assert state["verdict"]["code"] == "validates", state["verdict"]
    alias = test["alias"]
    [do] = probes["do"]["deliveries"]
    assert do["client_ip"] == world.DANE_SENDER
    assert do["tls"] is not None and do["tls"]["sni"] == f"{alias}.do.{zone}"
    assert probes["dont"]["status"] == "delivered"
    assert probes["dont"]["deliveries"][0]["tls"] is not None

    wrong = probes["wrong"]
    assert wrong["status"] in ("refused", "not-delivered") and wrong["deliveries"] == []
    # The evidence: a session from this sender that completed TLS for <alias>.wrong.<zone>
    # and left without MAIL (Postfix sends QUIT after the failed DANE check), tied to the
    # test by that name in SNI.
    refusals = [
        s
        for s in wrong["sessions"]
        if s["client_ip"] == world.DANE_SENDER
        and s["tls"] is not None
        and s["tls"]["sni"] == f"{alias}.wrong.{zone}"
        and s["mail_from"] is None
    ]
    assert refusals and refusals[0]["outcome"] == "tls-then-left", wrong["sessions"]
    assert refusals[0]["tied_by"] == "sni", refusals[0]

    # Postfix found the TLSA records of the wildcard at the test's own host and used them.
    assert f"Verified TLS connection established to {alias}.do.{zone}[" in log, log
    [deferred] = [line for line in log.splitlines() if f"@{alias}.wrong.{zone}>" in line and "status=" in line]
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
    assert f"@{test['alias']}.wrong.{lab.zone}>" in log and "Verified TLS" not in log


def test_posttls_finger_matches_ee_and_rejects_wrong(lab: world.World) -> None:
    host = world.fresh_host("do")
    do = lab.dane.finger(host)
    assert "Matched DANE EE certificate at depth 0: 3 1 1 " in do, do
    assert f"Verified TLS connection established to {host}[" in do, do

    wrong = lab.dane.finger(world.fresh_host("wrong"))
    assert "no matching DANE TLSA records" in wrong, wrong
    assert "Verified TLS" not in wrong and "Matched DANE" not in wrong, wrong


def test_posttls_finger_matches_the_ca_as_trust_anchor(lab: world.World) -> None:
    # The published set has 3 1 1 too, and OpenSSL reports the EE match first; with
    # only the CA's 2 1 1 the chain must be built up to our CA (and name-checked).
    # The name check under DANE-TA passes at every test's host: the leaf names *.do.<zone>.
    variant = zones.ta_only(lab.config, "do", world.RECEIVER)
    host = world.fresh_host("do")
    with world.alternate_dns(lab, "ta", variant, validation=True) as resolv_conf:
        out = lab.dane.finger(host, resolv_conf)
    assert "Matched DANE TA certificate at depth 1: 2 1 1 " in out, out
    assert f"Verified TLS connection established to {host}[" in out, out


def test_corrupted_signature_is_servfail(lab: world.World) -> None:
    variant = zones.corrupt_signature(lab.zone_text, lab.zone, f"*.do.{lab.zone}.", "TLSA")
    test_host = world.fresh_host("do")
    owner = f"_25._tcp.{test_host}."
    with world.alternate_dns(lab, "bogus", variant, validation=False) as resolv_conf:
        bogus = dnsservers.query(lab.ns, world.ALT_RESOLVER, owner, "TLSA")
        unchecked = dnsservers.query(lab.ns, world.ALT_RESOLVER, owner, "TLSA", checking_disabled=True)
        host = dnsservers.query(lab.ns, world.ALT_RESOLVER, test_host, "A")
        finger = lab.dane.finger(test_host, resolv_conf)
    assert bogus.rcode == "SERVFAIL"
    # The data is there (CD: no validation); only its signature is wrong, and only it.
    assert unchecked.rcode == "NOERROR" and unchecked.rrsets
    assert (host.rcode, host.ad) == ("NOERROR", True)
    # A DANE sender does not fall back to unauthenticated TLS: it stops (RFC 7672 §2.1.1).
    assert "TLSA lookup error" in finger, finger

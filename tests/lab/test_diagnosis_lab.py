"""The diagnosis from DNS, proven on real senders (issue 14): three Postfix instances, each
with its own test, read against their own configuration and their own log; the queries
that reached two Knot instances, each read by its own `havedane serve --role dns` into
one store. What the authoritative side can tell apart is in docs/dns-evidence.md: a DANE
sender behind a validating resolver fetches TLSA (RFC 7672 §2.2); a validating resolver
fetches the DNSKEY (RFC 4035 §5), when its cached copy ran out; a DANE sender behind a
non-validating resolver sees no AD bit and fetches no TLSA, like a sender without DANE."""

from __future__ import annotations

import html
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from havedane.dns import sign

from . import dnsservers, dnsworld
from .conftest import _missing
from .netns import wait_until
from .postfix import Postfix

pytestmark = pytest.mark.lab
DNSTAP_LAG = 3.0  # seconds from a query at Knot to its row in the store, at most (measured: 2.2)


@dataclass(frozen=True)
class Sent:
    sender: Postfix
    state: dict[str, Any]  # GET /api/tests/{alias}, once the verdict is in
    log: str  # what the sender logged while it sent
    page: str  # the test's page, as a browser gets it

    @property
    def dns(self) -> dict[str, Any]:
        dns: dict[str, Any] = self.state["dns"]
        return dns

    def host(self, probe: str) -> str:
        return str(self.state["probes"][probe]["host"])

    def setting(self, name: str) -> str:
        """The sender's own configuration, as Postfix reads it."""
        return self.sender.command("postconf", "-c", str(self.sender.dir), "-h", name).stdout.strip()


@pytest.fixture(scope="module")
def dnslab() -> Iterator[dnsworld.DnsWorld]:
    reason = _missing()
    if reason is not None:
        if os.geteuid() != 0 and os.environ.get("CI") != "true":
            pytest.skip(reason)
        pytest.fail(f"lab: {reason}", pytrace=False)
    directory = Path(tempfile.mkdtemp(prefix="havedane-dlab-"))
    os.chmod(directory, 0o755)  # Postfix's daemons, running as `postfix`, reach their queues
    try:
        with dnsworld.build(directory) as w:
            yield w
    finally:
        if os.environ.get("HAVEDANE_LAB_KEEP") != "1":
            shutil.rmtree(directory, ignore_errors=True)


def settled(lab: dnsworld.DnsWorld, alias: str) -> dict[str, Any]:
    def verdict() -> dict[str, Any] | None:
        r = lab.api("GET", f"/api/tests/{alias}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if body["verdict"]["code"] != "pending" else None

    return wait_until(verdict, 30, f"a verdict for {alias}", interval=0.25)


@pytest.fixture(scope="module")
def sent(dnslab: dnsworld.DnsWorld) -> dict[str, Sent]:
    """One test per sender, all three sent at once, DNSKEY_TTL + 1 s after the resolvers
    last resolved in the zone: the validating one has to fetch the DNSKEY again."""
    tests = {}
    for name in dnslab.senders:
        r = dnslab.api("POST", "/api/tests")
        assert r.status_code == 201, r.text
        tests[name] = r.json()
    # Before anything was sent: the web role reads no dnstap itself, but the page says DNS
    # evidence is collected here, and that none has come for this test.
    fresh = dnslab.api("GET", f"/api/tests/{tests['may']['alias']}").json()["dns"]
    assert (fresh["available"], fresh["finding"]) == (True, "no-queries"), fresh
    time.sleep(max(0.0, dnslab.resolvers_ready + sign.DNSKEY_TTL + 1 - time.monotonic()))
    queued = {}
    for name, sender in dnslab.senders.items():
        rcpts = [tests[name]["addresses"][p] for p in ("do", "dont", "wrong")]
        queued[name] = sender.send(f"postmaster@{name}.sender.test", rcpts, f"havedane lab: {name}")
    for name, sender in dnslab.senders.items():
        try:
            sender.wait_outcomes(queued[name], 3)
        finally:
            sender.delete_deferred()  # no retries: each would be one more session
        settled(dnslab, tests[name]["alias"])
    # The verdict can be in before the last dnstap frames are: Knot sends them in batches,
    # up to 2 s after the query (docs/dns-evidence.md), and a reader commits every 0.2 s.
    time.sleep(DNSTAP_LAG)
    out = {}
    for name, sender in dnslab.senders.items():
        alias = tests[name]["alias"]
        state = settled(dnslab, alias)
        page = dnslab.api("GET", f"/t/{alias}")
        assert page.status_code == 200, page.text
        out[name] = Sent(sender, state, sender.log(queued[name].log_offset), html.unescape(page.text))
    return out


def resolvers(s: Sent) -> dict[str, dict[str, Any]]:
    return {r["address"]: r for r in s.dns["resolvers"]}


def test_dane_sender_behind_a_validating_resolver(sent: dict[str, Sent]) -> None:
    s = sent["dane"]
    assert (s.setting("smtp_tls_security_level"), s.setting("smtp_dns_support_level")) == ("dane", "dnssec")
    # Its log: DANE-verified at do, deferred at wrong (RFC 7672 §2.2, no matching TLSA).
    assert f"Verified TLS connection established to {s.host('do')}[" in s.log, s.log
    [wrong] = [line for line in s.log.splitlines() if f"@{s.host('wrong')}>" in line and "status=" in line]
    assert "dsn=4.7.5" in wrong and "status=deferred" in wrong, wrong

    assert s.state["verdict"]["code"] == "validates", s.state["verdict"]
    assert s.dns["finding"] == "validates", s.dns
    # Which resolver fetched which records: the one its resolv.conf names, and no other.
    assert set(resolvers(s)) == {dnsworld.VALIDATING}, s.dns["resolvers"]
    mine = resolvers(s)[dnsworld.VALIDATING]
    assert {"do", "wrong"} <= set(mine["tlsa"]) and mine["dnskey"], mine
    assert set(s.dns["tlsa_fetched"]) >= {"do", "wrong"}
    assert s.host("do") in s.dns["lead"] and dnsworld.VALIDATING in s.dns["lead"], s.dns["lead"]
    tlsa = [q for q in s.dns["queries"] if q["qtype"] == "TLSA" and q["tlsa_probe"] == "wrong"]
    assert tlsa and all(q["qname"] == f"_25._tcp.{s.host('wrong')}" for q in tlsa), tlsa
    assert s.dns["lead"] in s.page


def test_may_sender_fetches_no_tlsa_and_its_resolver_validates(sent: dict[str, Sent]) -> None:
    s = sent["may"]
    assert s.setting("smtp_tls_security_level") == "may"
    assert "Verified TLS" not in s.log, s.log
    [wrong] = [line for line in s.log.splitlines() if f"@{s.host('wrong')}>" in line and "status=" in line]
    assert "status=sent" in wrong, wrong

    assert s.state["verdict"]["code"] == "does-not-validate", s.state["verdict"]
    assert s.dns["tlsa_fetched"] == [] and "wrong" in s.dns["about"], s.dns
    assert not [q for q in s.dns["queries"] if q["qtype"] == "TLSA"], s.dns["queries"]
    # Its resolver fetched the DNSKEY during the test (the DNSKEY TTL ran out before it):
    # the resolver validates, so DANE is off in the MTA.
    assert s.dns["finding"] == "resolver-validates", s.dns
    assert set(resolvers(s)) == {dnsworld.VALIDATING} and resolvers(s)[dnsworld.VALIDATING]["dnskey"]
    assert "DANE is not enabled in your mail server" in s.dns["lead"], s.dns["lead"]
    assert dnsworld.VALIDATING in s.dns["lead"]
    assert s.dns["lead"] in s.page


def test_dane_sender_behind_a_non_validating_resolver(sent: dict[str, Sent]) -> None:
    s = sent["dane-nonvalidating"]
    # Configured for DANE, like the first sender ...
    assert (s.setting("smtp_tls_security_level"), s.setting("smtp_dns_support_level")) == ("dane", "dnssec")
    # ... but its resolver sets no AD bit: Postfix says so and skips DANE everywhere.
    assert "not DNSSEC validated" in s.sender.log(), s.sender.log()
    assert "Verified TLS" not in s.log, s.log
    [wrong] = [line for line in s.log.splitlines() if f"@{s.host('wrong')}>" in line and "status=" in line]
    assert "status=sent" in wrong, wrong

    assert s.state["verdict"]["code"] == "does-not-validate", s.state["verdict"]
    assert s.dns["finding"] == "no-tlsa-no-dnskey", s.dns
    assert set(resolvers(s)) == {dnsworld.NON_VALIDATING}, s.dns["resolvers"]
    theirs = resolvers(s)[dnsworld.NON_VALIDATING]
    assert theirs["tlsa"] == [] and not theirs["dnskey"], theirs
    # The DO bit is set all the same: it tells nothing, and the page says so.
    assert theirs["dnssec_ok"], theirs
    # From DNS this is what a sender without DANE looks like: the page names both causes,
    # says they look alike from here, and how to tell them apart on the sender's side.
    lead = s.dns["lead"]
    assert "either DANE is not enabled in your mail server, or its resolver does not validate" in lead, lead
    assert dnsworld.NON_VALIDATING in lead, lead
    details = " ".join(s.dns["details"])
    assert "these two look the same" in details and "not DNSSEC validated" in details, details
    for said in (lead, *s.dns["details"]):
        assert said in s.page, said


def test_the_way_to_tell_them_apart_works(dnslab: dnsworld.DnsWorld, sent: dict[str, Sent]) -> None:
    """The page's advice for the third sender, followed on the lab's two resolvers: the
    validating one answers with AD (RFC 4035 §3.2.3), the non-validating one without."""
    details = " ".join(sent["dane-nonvalidating"].dns["details"])
    found = re.search(r"dig \+dnssec (\S+) TLSA", details)
    assert found, details
    validated = dnsservers.query(dnslab.ns, dnsworld.VALIDATING, found[1], "TLSA")
    unvalidated = dnsservers.query(dnslab.ns, dnsworld.NON_VALIDATING, found[1], "TLSA")
    assert (validated.rcode, validated.ad) == ("NOERROR", True) and validated.rrsets, validated
    assert (unvalidated.rcode, unvalidated.ad) == ("NOERROR", False) and unvalidated.rrsets, unvalidated


def test_the_first_two_diagnoses_differ(sent: dict[str, Sent]) -> None:
    findings = {name: s.dns["finding"] for name, s in sent.items()}
    assert len({findings["dane"], findings["may"], findings["dane-nonvalidating"]}) == 3, findings
    assert len({s.dns["lead"] for s in sent.values()}) == 3


def test_both_name_servers_feed_the_one_store(dnslab: dnsworld.DnsWorld, sent: dict[str, Sent]) -> None:
    """Each Knot has its own reader; the resolvers ask both; every query kept says which
    name server answered it (the response address in dnstap, RFC-less: dnstap.proto)."""
    shown = {q["server"] for s in sent.values() for q in s.dns["queries"]}
    assert shown == set(dnsworld.KNOTS), shown
    with sqlite3.connect(f"file:{dnslab.store}?mode=ro", uri=True) as db:
        rows = dict(db.execute("SELECT server, count(*) FROM dns_queries GROUP BY server").fetchall())
    assert set(rows) == set(dnsworld.KNOTS) and all(rows.values()), rows
    # Neither reader lost a batch or met a frame it could not read (dnstap.py logs both).
    for server, log in dnslab.readers.items():
        said = log.read_text()
        assert "failed" not in said and "malformed" not in said, (server, said)

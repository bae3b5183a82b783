"""The RFC 7672 conformance matrix, graded on real Postfix: one message to every probe
of one test, from the DANE-validating Postfix and from the one that does not validate,
each grade checked against what that Postfix itself logged for the recipient."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

import pytest

from havedane import probes

from . import world
from .netns import wait_until
from .postfix import Outcome, Postfix

pytestmark = pytest.mark.lab

ALL = tuple(probes.CATALOGUE.values())  # the lab serves them all: classic three + matrix
NEEDS_SNI = {p.name for p in ALL if p.chain is not None}  # their certificate is served only by SNI
# Two MX hosts at one address: without SNI, which of them took the mail is unknown.
FALLBACK = {p.name for p in ALL if p.mx_first is not None}

# What Postfix 3.7 at level `dane` logs for each probe, as seen in this lab (Postfix
# 3.7.11 with Knot and a validating Unbound): the status line (sent, or deferred with
# this DSN) and text that the lines about the probe's host must show.
DANE_POSTFIX: dict[str, tuple[str, tuple[str, ...]]] = {
    "do": ("2.0.0", ("Verified TLS connection established",)),
    "dont": ("2.0.0", ("Untrusted TLS connection established",)),
    "wrong": ("4.7.5", ("no matching DANE TLSA records", "Server certificate not verified")),
    "ee": ("2.0.0", ("Verified TLS connection established",)),
    "ta": ("2.0.0", ("Verified TLS connection established",)),
    "ta-badname": ("4.7.5", ("num=62:hostname mismatch", "Server certificate not verified")),
    "ta-expired": ("4.7.5", ("certificate has expired", "Server certificate not verified")),
    "ta-rogue": ("4.7.5", ("no matching DANE TLSA records", "Server certificate not verified")),
    "unusable": ("2.0.0", ("unsupported TLSA certificate usage", "Untrusted TLS connection established")),
    "unusable-notls": ("4.7.4", ("TLS is required, but was not offered",)),
    "ta-notls": ("4.7.4", ("TLS is required, but was not offered",)),
    "mixed-ee": ("2.0.0", ("Verified TLS connection established",)),
    "mixed-ta": ("2.0.0", ("Verified TLS connection established",)),
    "ta-full": ("2.0.0", ("Verified TLS connection established",)),
    "bogus": ("4.7.5", ("TLSA lookup error",)),
    "unsigned": ("2.0.0", ("Untrusted TLS connection established",)),
    "notls": ("4.7.4", ("TLS is required, but was not offered",)),
    "mx": ("2.0.0", ("Verified TLS connection established",)),
    # The NSEC3 proving "no TLSA" fails validation: Unbound answers SERVFAIL, Postfix defers.
    "denial-bogus": ("4.7.5", ("TLSA lookup error",)),
    # Skips mxfail (its TLSA match nothing), delivers through mxok, logging at mxfail:
    # "CA certificate verification failed for mxfail.<zone>[...]:25: num=65:no matching DANE
    # TLSA records", "Untrusted TLS connection established to mxfail...", then "Verified TLS
    # connection established to mxok..." and relay=mxok.
    "mx-fallback": ("2.0.0", ("no matching DANE TLSA records", "Verified TLS connection established")),
}


@dataclass(frozen=True)
class Account:
    """Postfix's own account of one recipient: its status line and every log line about
    the host it looked up TLSA for and connected to."""

    outcome: Outcome
    lines: list[str]

    @property
    def behaviour(self) -> probes.Expect:
        """What Postfix did, in the catalogue's words."""
        if self.outcome.status == "sent":
            return probes.Expect.DELIVER
        if self.outcome.relay == "none":
            return probes.Expect.NEVER_CONNECT
        return probes.Expect.REFUSE

    @property
    def tls(self) -> str | None:
        """Verified / Untrusted / Anonymous: how Postfix judged the TLS it established; None: no TLS."""
        for line in self.lines:
            found = re.search(r"(\w+) TLS connection established to ", line)
            if found:
                return found.group(1)
        return None


def accounts(sender: Postfix, log: str, outcomes: dict[str, Outcome], zone: str, alias: str) -> dict[str, Account]:
    out = {}
    for p in ALL:
        [outcome] = [o for rcpt, o in outcomes.items() if rcpt.endswith("@" + p.host(zone, alias))]
        # The host's name or its TLSA owner, not part of a longer name (notls.<zone> in unusable-notls.<zone>);
        # and an MX host it must skip.
        names = "|".join(re.escape(h) for h in (p.tls_host(zone, alias), p.first_mx_host(zone)) if h)
        host = re.compile(r"(?:(?<![\w.-])|(?<=_25\._tcp\.))(?:" + names + r")(?=[\[: ])")
        out[p.name] = Account(outcome, [line for line in log.splitlines() if host.search(line)])
    return out


def graded(lab: world.World, alias: str, connected: set[str], timeout: float = 30) -> dict[str, Any]:
    """The test's state once no probe's grade is pending (bogus and everything not
    delivered wait for the grace period: 5 s in the lab) and, within a few seconds more,
    a session is recorded for every probe the sender says it connected to (a session is
    saved just after its connection ends, so it may trail the sender's log line)."""

    def state() -> dict[str, Any]:
        r = lab.api("GET", f"/api/tests/{alias}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def final() -> dict[str, Any] | None:
        body = state()
        return None if any(p["grade"]["grade"] == "pending" for p in body["probes"].values()) else body

    def complete() -> dict[str, Any] | None:
        body = state()
        return body if all(body["probes"][n]["sessions"] for n in connected) else None

    wait_until(final, timeout, f"every probe of {alias} graded", interval=0.25)
    with contextlib.suppress(TimeoutError):  # a session still missing then is for agree() to report
        wait_until(complete, 5, f"sessions of {alias}", interval=0.1)
    return state()


def new_test(lab: world.World) -> dict[str, Any]:
    r = lab.api("POST", "/api/tests")
    assert r.status_code == 201, r.text
    test: dict[str, Any] = r.json()
    assert set(test["addresses"]) == {p.name for p in ALL}
    return test


def send_all(lab: world.World, sender: Postfix, count: int = 1) -> list[tuple[dict[str, Any], dict[str, Account]]]:
    """`count` new tests, one message from `sender` to all the addresses of each, all
    submitted at once (Postfix delivers them side by side); each one's graded state and
    Postfix's account of each of its recipients."""
    tests = [new_test(lab) for _ in range(count)]
    rcpts = [list(t["addresses"].values()) for t in tests]
    sent = [sender.send(f"postmaster@{sender.name}.sender.test", r, f"havedane lab: matrix from {sender.name}")
            for r in rcpts]  # fmt: skip
    try:
        results = []
        for test, message, to in zip(tests, sent, rcpts, strict=True):
            outcomes = sender.wait_outcomes(message, len(to))
            seen = accounts(sender, sender.log(message.log_offset), outcomes, lab.zone, test["alias"])
            connected = {name for name, a in seen.items() if a.behaviour is not probes.Expect.NEVER_CONNECT}
            results.append((test, seen, connected))
        return [(graded(lab, test["alias"], connected), seen) for test, seen, connected in results]
    finally:
        sender.delete_deferred()  # or Postfix retries them: more sessions at the receiver


def agree(name: str, probe: dict[str, Any], account: Account, client_ip: str) -> None:
    """havedane's record of a probe says what Postfix's log says, and the grade follows
    from what Postfix did against what the probe expects."""
    did = account.behaviour
    expect = probes.Expect(probe["expect"])
    mine = [s for s in probe["sessions"] if s["client_ip"] == client_ip]
    where = f"{name}: havedane {probe['status']} {probe['grade']}, Postfix {account.outcome} {account.lines}"
    if did is probes.Expect.DELIVER:
        [delivery] = probe["deliveries"]
        assert probe["status"] == "delivered" and delivery["client_ip"] == client_ip, where
        assert (delivery["tls"] is not None) == (account.tls is not None), where
    elif did is probes.Expect.REFUSE:
        # Connected (TLS where offered, then left without MAIL): havedane saw the refusal.
        assert probe["status"] == "refused" and probe["deliveries"] == [], where
        assert mine and all(s["mail_from"] is None for s in mine), where
        assert all(s["outcome"] == ("tls-then-left" if s["starttls"] else "left") for s in mine), where
    else:
        assert probe["status"] == "not-delivered" and probe["sessions"] == [], where
    sni = [s["tls"]["sni"] for s in mine if s["tls"]]
    if name in NEEDS_SNI and probe["tls_host"] not in sni:
        assert probe["grade"]["grade"] == "inconclusive" and "SNI" in probe["grade"]["reason"], where
    elif name in FALLBACK and not any(sni):
        assert probe["grade"]["grade"] == "inconclusive" and "SNI" in probe["grade"]["reason"], where
    elif (did is probes.Expect.DELIVER) == (expect is probes.Expect.DELIVER):
        assert probe["grade"]["grade"] == "pass", where
    else:
        assert probe["grade"]["grade"] == "fail", where


def test_dane_postfix_passes_every_probe(lab: world.World) -> None:
    [(state, seen)] = send_all(lab, lab.dane)
    probes_seen = state["probes"]

    for name, (dsn, evidence) in DANE_POSTFIX.items():
        account = seen[name]
        assert account.outcome.dsn == dsn, (name, account.outcome)
        assert account.outcome.status == ("sent" if dsn == "2.0.0" else "deferred"), (name, account.outcome)
        text = "\n".join(account.lines)
        assert all(e in text for e in evidence), (name, evidence, account.lines)
        agree(name, probes_seen[name], account, world.DANE_SENDER)
        assert probes_seen[name]["grade"]["grade"] == "pass", (name, probes_seen[name]["grade"])

    # bogus: the TLSA lookup failed, so Postfix never connected (nothing reached havedane).
    for name in ("bogus", "denial-bogus"):
        assert seen[name].outcome.relay == "none" and seen[name].tls is None, (name, seen[name])
    assert seen["mx"].outcome.relay.startswith(f"mxhost.{lab.zone}[")
    # mx-fallback: Postfix tried mxfail first, failed to authenticate it and left; the mail
    # went through mxok, never through mxfail (RFC 7672 §2.2).
    fallback = seen["mx-fallback"]
    assert fallback.outcome.relay.startswith(f"mxok.{lab.zone}["), fallback.outcome
    first = [line for line in fallback.lines if f"mxfail.{lab.zone}" in line]
    assert any("no matching DANE TLSA records" in line for line in first), fallback.lines
    assert not [line for line in fallback.lines if "Verified TLS" in line and f"mxfail.{lab.zone}" in line]
    [delivery] = probes_seen["mx-fallback"]["deliveries"]
    assert delivery["tls"]["sni"] == f"mxok.{lab.zone}", delivery
    # Postfix sends SNI only where DANE applies (usable, signed TLSA), and then the TLS host's name.
    for p in ALL:
        sessions = [s for s in probes_seen[p.name]["sessions"] if s["tls"]]
        dane = p.zone is probes.Zone.PARENT and p.tlsa not in (probes.Tlsa.NONE, probes.Tlsa.UNUSABLE)
        sni = {p.tls_host(lab.zone, state["alias"]), p.first_mx_host(lab.zone)} if dane else {None}
        assert all(s["tls"]["sni"] in sni for s in sessions), (p.name, sessions)
    assert state["verdict"]["code"] == "validates", state["verdict"]
    assert state["conformance"] == f"Conforms on {len(ALL)} of {len(ALL)} probes.", state["conformance"]


def test_plain_postfix_fails_every_must_not_deliver_probe(lab: world.World) -> None:
    [(state, seen)] = send_all(lab, lab.plain)
    probes_seen = state["probes"]

    # `may`: it delivers everywhere, in cleartext where STARTTLS is not offered.
    for p in ALL:
        account = seen[p.name]
        assert account.behaviour is probes.Expect.DELIVER, (p.name, account.outcome)
        assert account.tls == ("Untrusted" if p.starttls else None), (p.name, account.lines)
        agree(p.name, probes_seen[p.name], account, world.PLAIN_SENDER)
        # It authenticates nothing, so it names no server: no SNI anywhere.
        assert all(s["tls"] is None or s["tls"]["sni"] is None for s in probes_seen[p.name]["sessions"])

    grades = {name: p["grade"]["grade"] for name, p in probes_seen.items()}
    # Without SNI it never saw the certificates of ee, ta-badname, ta-expired and ta-rogue:
    # inconclusive there, not a grade it did not earn; nor did it name an MX host of
    # mx-fallback, so which one took the mail is unknown. Everywhere else the grade is exact:
    # fail where a DANE sender must not deliver, pass where it must.
    expected = {
        p.name: "inconclusive"
        if p.name in NEEDS_SNI | FALLBACK
        else "pass"
        if p.expect is probes.Expect.DELIVER
        else "fail"
        for p in ALL
    }
    assert grades == expected
    must_not = {"wrong", "unusable-notls", "ta-notls", "bogus", "notls", "denial-bogus"}
    assert {n for n, g in grades.items() if g == "fail"} == must_not
    inconclusive = {"ee", "ta-badname", "ta-expired", "ta-rogue", "ta-full", "mx-fallback"}
    assert {n for n, g in grades.items() if g == "inconclusive"} == inconclusive
    # mx-fallback: it delivered through the preferred MX host, mxfail, naming none in SNI.
    assert seen["mx-fallback"].outcome.relay.startswith(f"mxfail.{lab.zone}["), seen["mx-fallback"].outcome
    for name in ("notls", "unusable-notls", "ta-notls"):
        assert probes_seen[name]["grade"]["reason"] == "delivered without TLS, where TLS is mandatory"
    assert state["verdict"]["code"] == "does-not-validate", state["verdict"]
    passed = sum(g == "pass" for g in grades.values())
    assert state["conformance"].startswith(f"Conforms on {passed} of {len(ALL)} probes."), state["conformance"]


def test_bogus_and_unsigned_as_the_resolver_sees_them(lab: world.World) -> None:
    zone = lab.zone
    # bogus: signed child zone (DS in the parent) whose TLSA signature is broken.
    # Every test's host is the child zone's wildcard *.bogus.<zone>.
    host = world.fresh_host("bogus")
    tlsa = lab.query(f"_25._tcp.{host}", "TLSA")
    assert tlsa.rcode == "SERVFAIL", tlsa
    unchecked = lab.query(f"_25._tcp.{host}", "TLSA", checking_disabled=True)
    assert unchecked.rcode == "NOERROR" and any(" TLSA 3 1 1 " in r for r in unchecked.rrsets), unchecked
    answer = lab.query(host, "A")
    assert (answer.rcode, answer.ad) == ("NOERROR", True) and answer.rrsets, answer
    mx = lab.query(host, "MX")
    assert (mx.rcode, mx.ad, mx.rrsets) == ("NOERROR", True, []), mx  # no MX, proven
    ds = lab.query(f"bogus.{zone}", "DS")
    assert (ds.rcode, ds.ad) == ("NOERROR", True) and any(" DS " in r for r in ds.rrsets), ds

    # unsigned: delegated without DS, and the parent proves there is none (NSEC3, AD).
    no_ds = lab.query(f"unsigned.{zone}", "DS")
    assert (no_ds.rcode, no_ds.ad, no_ds.rrsets) == ("NOERROR", True, []), no_ds
    host = world.fresh_host("unsigned")
    for name, rdtype in ((f"_25._tcp.{host}", "TLSA"), (host, "A")):
        answer = lab.query(name, rdtype)
        assert (answer.rcode, answer.ad) == ("NOERROR", False) and answer.rrsets, (name, answer)

    # denial-bogus: the test host's MX (in the valid parent) is the apex of a signed child
    # zone whose NSEC3 proving "no TLSA at _25._tcp.<MX host>" has a broken signature.
    # What Unbound does: SERVFAIL for the TLSA lookup (the NODATA proof is bogus); the
    # MX, the MX host's address and its AAAA NODATA (another NSEC3) validate (AD).
    host, mxdenial = world.fresh_host("denial-bogus"), f"mxdenial.{zone}"
    mx = lab.query(host, "MX")
    assert (mx.rcode, mx.ad) == ("NOERROR", True) and mx.rrsets, mx
    tlsa = lab.query(f"_25._tcp.{mxdenial}", "TLSA")
    assert tlsa.rcode == "SERVFAIL", tlsa
    unchecked = lab.query(f"_25._tcp.{mxdenial}", "TLSA", checking_disabled=True)
    assert (unchecked.rcode, unchecked.rrsets) == ("NOERROR", []), unchecked  # NODATA: there is no TLSA
    for rdtype, records in (("A", True), ("AAAA", False)):
        answer = lab.query(mxdenial, rdtype)
        assert (answer.rcode, answer.ad, bool(answer.rrsets)) == ("NOERROR", True, records), (rdtype, answer)

    # All are reached through the parent's delegation to ns.<zone>, where the child
    # zones are served as `havedane zone --sign` wrote them.
    ns = lab.query(f"ns.{zone}", "A")
    assert (ns.rcode, ns.ad) == ("NOERROR", True) and any(world.AUTHORITATIVE in r for r in ns.rrsets), ns
    assert set(lab.children) == {f"bogus.{zone}", f"unsigned.{zone}", f"mxdenial.{zone}"}


def test_posttls_finger_matches_ee_at_depth_0_and_ta_at_depth_1(lab: world.World) -> None:
    # The probes' own TLSA sets: only 3 1 1 of the self-signed, expired, misnamed leaf;
    # only 2 1 1 of our CA, matched one level up the chain (RFC 7672 §3.1.1, §3.1.2).
    ee_host, ta_host = world.fresh_host("ee"), world.fresh_host("ta")
    ee = lab.dane.finger(ee_host)
    assert "Matched DANE EE certificate at depth 0: 3 1 1 " in ee, ee
    assert f"Verified TLS connection established to {ee_host}[" in ee, ee
    ta = lab.dane.finger(ta_host)
    assert "Matched DANE TA certificate at depth 1: 2 1 1 " in ta, ta
    assert f"Verified TLS connection established to {ta_host}[" in ta, ta


def test_posttls_finger_matches_one_record_of_a_mixed_set_and_the_full_ta_key(lab: world.World) -> None:
    # mixed-ee: the 3 1 1 matches the leaf, the 2 1 1 matches nothing; mixed-ta: the other
    # way round. Either set authenticates (any one usable record may match, RFC 7672 §3.1).
    mixed_ee, mixed_ta = world.fresh_host("mixed-ee"), world.fresh_host("mixed-ta")
    ee = lab.dane.finger(mixed_ee)
    assert "Matched DANE EE certificate at depth 0: 3 1 1 " in ee, ee
    assert f"Verified TLS connection established to {mixed_ee}[" in ee, ee
    ta = lab.dane.finger(mixed_ta)
    assert "Matched DANE TA certificate at depth 1: 2 1 1 " in ta, ta
    assert f"Verified TLS connection established to {mixed_ta}[" in ta, ta
    # ta-full: only 2 1 0, our CA's whole public key; the server sends the leaf alone, and
    # the key in DNS is the trust anchor that signed it (RFC 7671 §5.2.2).
    full = world.fresh_host("ta-full")
    out = lab.dane.finger(full)
    assert f"Verified TLS connection established to {full}[" in out, out
    assert "depth=1" not in out and "certificate at depth 1" not in out, out  # nothing above the leaf was sent


def test_two_tests_from_one_sender_at_once_each_get_only_their_own_refusals(lab: world.World) -> None:
    """One outbound platform, two tests at the same time (issue 14): by client address the
    refusal at `wrong` could be either test's; the DANE sender names the test's own host
    in SNI, so each test gets its own refusal, and only its own."""
    results = send_all(lab, lab.dane, count=2)
    hosts = {state["alias"]: f"{state['alias']}.wrong.{lab.zone}" for state, _ in results}
    for state, seen in results:
        alias = state["alias"]
        assert seen["wrong"].behaviour is probes.Expect.REFUSE, seen["wrong"].outcome
        wrong = state["probes"]["wrong"]
        assert wrong["status"] == "refused" and wrong["grade"]["grade"] == "pass", wrong
        sessions = wrong["sessions"]
        assert sessions and all(s["tls"] is not None and s["tls"]["sni"] == hosts[alias] for s in sessions), sessions
        assert all(s["tied_by"] == "sni" and s["competing_tests"] == 0 for s in sessions), sessions
        # Every refusal with a test's host in SNI is tied to that test: the other's is not here.
        for name in NEEDS_SNI | {"wrong"}:
            for s in state["probes"][name]["sessions"]:
                assert s["tls"] is None or s["tls"]["sni"] is None or s["tls"]["sni"].startswith(alias + "."), s
        # mx: its TLS host is the same for both tests; the delivery is tied by its recipient.
        [delivery] = state["probes"]["mx"]["deliveries"]
        assert delivery["tied_by"] == "rcpt" and delivery["rcpt"] == state["addresses"]["mx"]
        assert state["verdict"]["code"] == "validates", state["verdict"]

"""What DNS shows, for every combination of DNS facts and what the sender did at do, dont and wrong.

The facts are DnsQuery values as the dnstap reader stores them (tied to the test by the
alias in their names, zone-level ones by nothing); the expectations are docs/dns-evidence.md's
measurements, written out independently of diagnosis.finding.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest

from havedane import probes, wording
from havedane.diagnosis import Finding
from havedane.dns.evidence import DnsEvidence, resolvers
from havedane.dns.queries import DnsQuery, probe_hosts, tie
from havedane.model import Delivery, Outcome, Session, Test, Tls
from havedane.verdict import Code, Verdict, evaluate

DOMAIN = "x.test"
ALIAS = "k7q2m9x4c1v8b3n6"
T0 = 1_700_000_000.0
GRACE = 60.0
CLIENT = "192.0.2.1"
RESOLVER = "198.51.100.53"
TLS = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", None)
HOSTS = probe_hosts(DOMAIN, tuple(probes.CATALOGUE.values()))


def query(qname: str, qtype: str, at: float = T0 + 0.5, resolver: str = RESOLVER, do: bool = True) -> DnsQuery:
    return tie(DnsQuery(at, resolver, "udp", qname, qtype, do, "NOERROR"), HOSTS)


def names(probe: str) -> list[DnsQuery]:
    """What a non-DANE sender's resolver asks: the host's MX (none: NODATA) and A."""
    return [query(f"{ALIAS}.{probe}.{DOMAIN}", "MX"), query(f"{ALIAS}.{probe}.{DOMAIN}", "A")]


def tlsa(probe: str) -> DnsQuery:
    return query(f"_25._tcp.{ALIAS}.{probe}.{DOMAIN}", "TLSA")


DNSKEY = query(DOMAIN, "DNSKEY", at=T0 + 0.6)

# What the name servers saw (None: no dnstap feed on this deployment).
FACTS: dict[str, list[DnsQuery] | None] = {
    "no-feed": None,
    "nothing": [],
    "names": names("do") + names("dont") + names("wrong"),
    "names+dnskey": [*names("do"), *names("dont"), *names("wrong"), DNSKEY],
    "tlsa-all": [*names("do"), *names("wrong"), tlsa("do"), tlsa("dont"), tlsa("wrong")],
    "tlsa-all+dnskey": [*names("do"), tlsa("do"), tlsa("dont"), tlsa("wrong"), DNSKEY],
    "tlsa-do": [*names("do"), *names("wrong"), tlsa("do")],
    "tlsa-do+dnskey": [*names("do"), *names("wrong"), tlsa("do"), DNSKEY],
    "tlsa-wrong": [*names("wrong"), tlsa("wrong")],
}

# What the sender did: (do, dont, wrong), each "tls", "plain", "refused" or "nothing"; and whether
# the grace period is over.
OUTCOMES = {
    "validates": (("tls", "tls", "refused"), False),
    "validates-stayed-away": (("tls", "tls", "nothing"), True),
    "does-not-validate": (("tls", "tls", "tls"), False),
    "no-tls": (("plain", "plain", "plain"), False),
    "pending": (("tls", "nothing", "nothing"), False),
    "incomplete": (("tls", "nothing", "refused"), True),
}
CODES = {
    "validates": Code.VALIDATES,
    "validates-stayed-away": Code.VALIDATES,
    "does-not-validate": Code.DOES_NOT_VALIDATE,
    "no-tls": Code.NO_TLS,
    "pending": Code.PENDING,
    "incomplete": Code.INCOMPLETE,
}
# The probes the sender delivered to against DANE: where it must refuse, or in plaintext
# where the TLSA records make TLS mandatory (RFC 7672 §2.2).
AGAINST = {"does-not-validate": {"wrong"}, "no-tls": {"do", "wrong"}}


def judge(outcome: str, facts: str, clients: tuple[str, ...] = (CLIENT,)) -> Verdict:
    (do, dont, wrong), grace_over = OUTCOMES[outcome]
    deliveries: list[Delivery] = []
    sessions: list[Session] = []
    for i, (probe, event) in enumerate(zip(("do", "dont", "wrong"), (do, dont, wrong), strict=True)):
        client = clients[i % len(clients)]
        if event in ("tls", "plain"):
            rcpt = probes.CATALOGUE[probe].address(ALIAS, DOMAIN)
            tls = TLS if event == "tls" else None
            deliveries.append(Delivery(ALIAS, probe, T0 + 1 + i, client, "mx.s", "a@s", rcpt, tls))
        elif event == "refused":
            sessions.append(Session(
                id=f"s-{probe}", started=T0 + 2, ended=T0 + 3, client_ip=client, client_port=1, local_ip="127.0.0.1",
                local_port=25, helo="mx.s", starttls=True, tls=Tls("TLSv1.3", "X", f"{ALIAS}.{probe}.{DOMAIN}"),
                probe=probe, alias=ALIAS, outcome=Outcome.TLS_THEN_LEFT,
            ))  # fmt: skip
    now = T0 + 1 + GRACE + (1 if grace_over else -50)
    seen = FACTS[facts]
    dns = None if seen is None else DnsEvidence(True, tuple(seen))
    return evaluate(probes.CLASSIC, Test(ALIAS, T0), sessions, deliveries, now, GRACE, DOMAIN, None, dns)


def expected(outcome: str, facts: str) -> Finding:
    """docs/dns-evidence.md, "Per-test names and dnstap", case by case."""
    if facts == "no-feed":
        return Finding.NOT_AVAILABLE
    if facts == "nothing":
        return Finding.NO_QUERIES
    fetched = {"tlsa-all": {"do", "dont", "wrong"}, "tlsa-do": {"do"}, "tlsa-wrong": {"wrong"}}.get(
        facts.removesuffix("+dnskey"), set()
    )
    if outcome in AGAINST:
        if fetched & AGAINST[outcome]:
            return Finding.FETCHED_AND_DELIVERED  # it looked the records up and delivered anyway
        if fetched:
            return Finding.FETCHED_ELSEWHERE
        # No TLSA lookup: a DNSKEY fetch shows the resolver validates, so DANE is off in the MTA;
        # without one, DANE off and a non-validating resolver look alike.
        return Finding.RESOLVER_VALIDATES if facts.endswith("+dnskey") else Finding.NO_TLSA_NO_DNSKEY
    if outcome.startswith("validates"):
        return Finding.VALIDATES if fetched else Finding.VALIDATES_UNSEEN
    return Finding.SEEN


@pytest.mark.parametrize(("outcome", "facts"), list(itertools.product(OUTCOMES, FACTS)))
def test_every_combination_of_dns_facts_and_outcomes(outcome: str, facts: str) -> None:
    v = judge(outcome, facts)
    assert v.code is CODES[outcome]  # DNS never changes the verdict
    assert v.dns.finding is expected(outcome, facts)
    said = wording.diagnosis(v)
    assert len(re.findall(r"[.!?](?:\s|$)", said.lead)) == 1, said.lead  # one sentence, details after it
    words = said.text
    if v.dns.resolvers:
        assert RESOLVER in words  # the resolver is named by its address
    # Each sentence says what was seen, never more: a resolver "validates" only after a DNSKEY fetch,
    # a TLSA fetch is claimed only where one was seen.
    assert ("validates DNSSEC" in words) == (v.dns.finding is Finding.RESOLVER_VALIDATES)
    assert ("DNSKEY records during the test" in words) == facts.endswith("+dnskey")
    assert bool(re.search("(fetched|looked up) the TLSA records of", words)) == ("tlsa" in facts)
    assert ("not available on this deployment" in words) == (facts == "no-feed")


def test_no_tlsa_and_no_dnskey_says_both_causes_and_how_to_tell_them_apart() -> None:
    v = judge("does-not-validate", "names")
    said = wording.diagnosis(v)
    assert "either DANE is not enabled in your mail server, or its resolver does not validate" in said.lead
    assert RESOLVER in said.lead
    words = said.text
    assert f"dig +dnssec _25._tcp.do.{DOMAIN} TLSA" in words and '"ad"' in words
    assert "smtp_dns_support_level = dnssec" in words and "smtp_tls_security_level = dane" in words
    # The DO bit is reported, as showing nothing.
    assert "DNSSEC OK bit set, which validating and non-validating resolvers both set" in words


def test_delivered_although_its_tlsa_was_fetched() -> None:
    said = wording.diagnosis(judge("does-not-validate", "tlsa-all+dnskey"))
    assert said.lead.startswith(f"Your server's resolver fetched the TLSA records of {ALIAS}.wrong.{DOMAIN}")
    assert "delivered there anyway" in said.lead


def test_validates_says_which_resolver_fetched_which_records() -> None:
    v = judge("validates", "tlsa-all+dnskey")
    assert [(r.address, r.tlsa, r.dnskey) for r in v.dns.resolvers] == [(RESOLVER, ("do", "dont", "wrong"), True)]
    words = wording.diagnosis(v).text
    assert (
        f"The resolver at {RESOLVER} asked for this test's names and looked up the TLSA records of {ALIAS}.do.{DOMAIN}"
        in words
    )


def test_a_resolver_on_the_mail_server_itself_is_said_to_be_so() -> None:
    v = judge("does-not-validate", "names+dnskey", clients=(RESOLVER,))
    assert v.dns.resolvers[0].is_client
    assert f"{RESOLVER} (the address your server connected from)" in wording.diagnosis(v).lead


def test_zone_level_queries_count_only_for_a_resolver_that_asked_this_tests_names() -> None:
    # Another resolver's DNSKEY fetch (a shared resolver's, another test's) and zone-level names
    # that are no evidence (SOA, a probe host itself) show nothing about this test's resolver.
    seen = [*names("wrong"), query(DOMAIN, "DNSKEY", resolver="203.0.113.9"), query(DOMAIN, "SOA"),
            query(f"wrong.{DOMAIN}", "A")]  # fmt: skip
    [r] = resolvers(seen, probes.CLASSIC, DOMAIN)
    assert (r.address, r.dnskey, r.tlsa, r.queries) == (RESOLVER, False, (), 2)
    # A DS fetch (a child zone's) is a validator's too (RFC 4035 §5).
    [r] = resolvers([*names("wrong"), query(f"bogus.{DOMAIN}", "DS")], probes.CLASSIC, DOMAIN)
    assert r.dnskey


def test_a_tlsa_lookup_at_a_fixed_host_counts_for_its_probe() -> None:
    mx = probes.CATALOGUE["mx"]
    fixed = query(f"_25._tcp.{mx.tls_host(DOMAIN)}", "TLSA")
    assert fixed.zone_level
    [r] = resolvers([*names("mx"), fixed], (*probes.CLASSIC, mx), DOMAIN)
    assert r.tlsa == ("mx",)


def test_the_do_bit_is_reported_and_decides_nothing() -> None:
    with_do = judge("does-not-validate", "names")
    FACTS["no-do"] = [dataclasses.replace(q, dnssec_ok=False) for q in FACTS["names"] or []]
    try:
        without = judge("does-not-validate", "no-do")
    finally:
        del FACTS["no-do"]
    assert with_do.dns.resolvers[0].dnssec_ok and not without.dns.resolvers[0].dnssec_ok
    assert with_do.dns.finding is without.dns.finding is Finding.NO_TLSA_NO_DNSKEY
    assert wording.DO_BIT in wording.diagnosis(with_do).details
    assert wording.DO_BIT not in wording.diagnosis(without).details


def test_a_tlsa_lookup_where_none_are_published_is_not_called_a_fetch_of_records() -> None:
    """dont publishes no TLSA records: a DANE sender's resolver looks them up there and gets
    none (NOERROR, no data: seen in tests/lab/test_diagnosis_lab.py). The words say it looked
    them up; "fetched the TLSA records of <alias>.dont..." claimed records that do not exist."""
    v = judge("validates", "tlsa-all+dnskey")
    said = wording.diagnosis(v)
    assert f"{ALIAS}.dont.{DOMAIN}" in said.lead
    assert "fetched the TLSA records" not in said.text
    assert said.lead.startswith(f"Your server's resolver looked up the TLSA records of {ALIAS}.do.{DOMAIN}")

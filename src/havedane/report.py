"""A test's current state: read from the store, judged, and shaped for the API and the page.

One test can receive any amount of mail, so a report reads a bounded number of rows and
counts the rest (the API and the page say "showing N of M"), and the judging runs in a
worker thread: the event loop that also serves SMTP is never held by a big test.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field
from typing import Any

from havedane import wording
from havedane.config import Config
from havedane.dns.evidence import DnsEvidence, ResolverFacts, relevant, tlsa_probe
from havedane.dns.queries import DnsQuery, probe_names
from havedane.model import Delivery, Session, Test, Tie, Tls
from havedane.store import Store
from havedane.verdict import Verdict, evaluate

# A session is tied to its test by the test's host it named: in RCPT, or, when it sent no
# MAIL, in SNI (model.Tie). One that named neither (no SNI: a sender that does not do DANE
# there, or a probe at a fixed MX host) carries no alias: it is tied to a test by the client address
# that delivered the test's other probes, but only while that test waits for mail: from
# MARGIN seconds before its first delivery (a sender tries its recipients in parallel,
# the refusal may come first; never before the test was created) to the end of its grace
# period. Outside that window it may be anyone's, e.g. the next test from the same server.
MARGIN = 60.0
DELIVERIES_SHOWN = 50  # per probe, the newest (and the first of each kind: store.base.KINDS_SHOWN)
SESSIONS_SHOWN = 100  # per test, the newest (and the oldest without MAIL: store.base.SESSIONS_WITHOUT_MAIL)
# Zone-level DNS queries per test: read at most the oldest ZONE_QUERIES_READ from the test's
# resolvers in its window (a shared resolver asks for other names too), of those show the
# evidence (DNSKEY, DS, a fixed host's TLSA), at most ZONE_QUERIES_SHOWN. The test's own
# queries are bounded when stored ([dns] max_queries_per_test).
ZONE_QUERIES_READ = 1000
ZONE_QUERIES_SHOWN = 50


@dataclass(frozen=True)
class Report:
    test: Test
    verdict: Verdict
    now: float
    # Session id -> how many other tests from the same address it could belong to.
    competing: dict[str, int] = field(default_factory=dict)
    deliveries_total: dict[str, int] = field(default_factory=dict)  # per probe
    sessions_total: int = 0
    sessions_shown: int = 0


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def load(store: Store, config: Config, alias: str, now: float) -> Report | None:
    test = await store.get_test(alias)
    if test is None:
        return None
    deliveries = await store.deliveries_for(alias, DELIVERIES_SHOWN)
    totals = await store.delivery_totals(alias)
    first = min((d.received_at for d in deliveries), default=None)  # the bounded read keeps the first
    if first is None:
        client_ips: list[str] = []
        since, until = test.created, None
    else:
        client_ips = sorted({d.client_ip for d in deliveries})
        since, until = window(test.created, first, config.grace)
    sessions = await store.sessions_for(alias, client_ips, since, until, SESSIONS_SHOWN)
    sessions_total = await store.session_total(alias, client_ips, since, until)
    competing = await competitors(store, alias, [s for s in sessions if s.alias is None], config.grace)
    dns = await dns_evidence(store, config, test, None if first is None else first + config.grace)
    verdict = await asyncio.to_thread(
        evaluate, config.probes, test, sessions, deliveries, now, config.grace, config.domain, competing, dns
    )
    return Report(test, verdict, now, competing, totals, sessions_total, len(sessions))


async def dns_evidence(store: Store, config: Config, test: Test, until: float | None) -> DnsEvidence:
    """The test's DNS queries, and the zone-level ones from the resolvers that asked them,
    from its creation to the end of its grace period (dns.queries: tied by address and time)."""
    own = await store.dns_queries_for(test.alias, [], test.created, until)
    asked = sorted({q.resolver for q in own})
    if asked:
        read = await store.dns_queries_for(test.alias, asked, test.created, until, ZONE_QUERIES_READ)
        zone = [q for q in relevant(read, probe_names(config.domain, config.probes)) if q.zone_level]
        own = sorted([*own, *zone[:ZONE_QUERIES_SHOWN]], key=lambda q: (q.time, q.id or 0))
    # Stored queries show a feed on some host even where this one's config names no socket.
    return DnsEvidence(config.dnstap_socket is not None or bool(own), tuple(own))


def window(created: float, first: float, grace: float) -> tuple[float, float]:
    """When a session without alias may belong to a test: see MARGIN."""
    return max(created, first - MARGIN), first + grace


async def competitors(store: Store, alias: str, untied: list[Session], grace: float) -> dict[str, int]:
    """For each session tied by address: how many other tests from that address were
    waiting for mail when it started (their windows hold it too)."""
    if not untied:
        return {}
    starts = [s.started for s in untied]
    # A competing test's first delivery lies within [start - grace, start + MARGIN]; its
    # delivery from this address, within its own grace period after that.
    others = [
        t for t in await store.tests_sent_from(
            sorted({s.client_ip for s in untied}), min(starts) - grace, max(starts) + MARGIN + grace)
        if t.alias != alias
    ]  # fmt: skip
    counts = {}
    for s in untied:
        since_until = [window(t.created, t.first, grace) for t in others if t.client_ip == s.client_ip]
        counts[s.id] = sum(since <= s.started <= until for since, until in since_until)
    return counts


def tls_json(tls: Tls | None) -> dict[str, Any] | None:
    return None if tls is None else {"version": tls.version, "cipher": tls.cipher, "sni": tls.sni}


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "received_at": iso(d.received_at),
        "client_ip": d.client_ip,
        "helo": d.helo,
        "mail_from": d.mail_from,
        "rcpt": d.rcpt,
        "tls": tls_json(d.tls),
        "size": d.size,
        "message_id": d.message_id,
        "tied_by": Tie.RCPT.value,  # a delivery names its test in its recipient
    }


def session_json(s: Session, competing: dict[str, int], refusal: bool) -> dict[str, Any]:
    return {
        "id": s.id,
        "started": iso(s.started),
        "ended": iso(s.ended),
        "client_ip": s.client_ip,
        "local": s.local_ip,
        "helo": s.helo,
        "starttls": s.starttls,
        "tls": tls_json(s.tls),
        "mail_from": s.mail_from,
        "rcpts": s.rcpts,
        "probe": s.probe,
        "outcome": s.outcome.value,
        # How it is tied to this test: a recipient it named, the host it asked for in SNI
        # (a refusal), or neither: by its client address (model.Tie).
        "tied_by": s.tied_by.value,
        "correlated_by_client_ip": s.alias is None,
        "competing_tests": competing.get(s.id, 0),
        "refusal": refusal,  # the verdict counts it as a refusal at this probe
        "error": s.error,
    }


def dns_query_json(q: DnsQuery, named: dict[str, str]) -> dict[str, Any]:
    return {
        "time": iso(q.time),
        "resolver": q.resolver,
        "transport": q.transport,
        "qname": q.qname,
        "qtype": q.qtype,
        "dnssec_ok": q.dnssec_ok,
        "rcode": q.rcode,
        "server": q.server,
        "zone_level": q.zone_level,  # tied to the test by resolver address and time, not by name
        "tlsa_probe": tlsa_probe(q, named),
    }


def resolver_json(r: ResolverFacts) -> dict[str, Any]:
    return {
        "address": r.address,
        "tlsa": list(r.tlsa),
        "dnskey": r.dnskey,
        "dnssec_ok": r.dnssec_ok,
        "queries": r.queries,
        "first": iso(r.first),
        "is_client": r.is_client,
    }


def dns_json(config: Config, v: Verdict) -> dict[str, Any]:
    named = probe_names(config.domain, config.probes)
    said = wording.diagnosis(v)
    return {
        "available": v.dns.available,
        "finding": v.dns.finding.value,
        "lead": said.lead,
        "details": list(said.details),
        "about": list(v.dns.about),
        "tlsa_fetched": list(v.dns.fetched),
        "resolvers": [resolver_json(r) for r in v.dns.resolvers],
        "queries": [dns_query_json(q, named) for q in v.dns.queries],
    }


def to_json(config: Config, report: Report) -> dict[str, Any]:
    v = report.verdict
    head, said, matrix = wording.headline(v), wording.summary(v), wording.conformance(v)
    return {
        "alias": report.test.alias,
        "created": iso(report.test.created),
        "url": f"{config.public_url}/t/{report.test.alias}",
        "addresses": addresses(config, report.test.alias),
        "probes": {
            name: {
                "host": r.probe.host(config.domain, report.test.alias),
                "address": r.probe.address(report.test.alias, config.domain),
                "expect": r.probe.expect.value,
                "expected": wording.expected(r.probe.expect, r.probe.tls_required),
                "tlsa": r.probe.tlsa.value,
                "tests": r.probe.tests,
                "rfc": r.probe.rfc,
                "status": r.status.value,
                "classic": r.probe.classic,
                "tls_required": r.probe.tls_required,
                "tls_host": r.probe.tls_host(config.domain, report.test.alias),
                "grade": {"grade": v.grades[name].grade.value, "reason": wording.reason(v, name)},
                "reason_code": v.grades[name].reason.value,
                "exposes": v.grades[name].exposes,
                "proves": wording.proves(v, name),
                "deliveries": [delivery_json(d) for d in r.deliveries],
                "deliveries_total": report.deliveries_total.get(name, 0),
                "sessions": [session_json(s, report.competing, r.is_refusal(s)) for s in r.sessions],
            }
            for name, r in v.probes.items()
        },
        "sessions_total": report.sessions_total,
        "sessions_shown": report.sessions_shown,
        "verdict": {
            "code": v.code.value,
            "headline": head.title,
            "tone": head.tone,
            "summary": said.text,
            "lead": said.lead,
            "details": list(said.details),
            "first_delivery": iso(v.first_delivery),
            "grace_ends": iso(v.grace_ends),
        },
        "dns": dns_json(config, v),
        "conformance": matrix.text,
        "conformance_detail": {
            "headline": matrix.headline,
            "tally": matrix.tally,
            "tone": matrix.tone,
            "counts": {g.value: n for g, n in v.counts().items()},
        },
    }  # fmt: skip


def addresses(config: Config, alias: str) -> dict[str, str]:
    return {p.name: p.address(alias, config.domain) for p in config.probes}

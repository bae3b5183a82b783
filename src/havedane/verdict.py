"""The verdict: a pure function of (probes, test, sessions, deliveries, now), returning facts.

Per probe: pending -> delivered | refused | not-delivered, and a grade with a reason
code. Overall, from the classic probes' expectations in the catalogue (never from
their names):

- no-tls: a probe with matching TLSA was delivered in plaintext (RFC 7672 §2.2
  makes TLS mandatory once usable TLSA records exist), so nothing was validated;
- does-not-validate: a probe a DANE sender must refuse was delivered;
- validates: every must-deliver probe arrived (TLSA-protected ones over TLS) and
  every must-refuse probe was refused or stayed away past the grace period;
- validates-with-flaws: as validates, but a probe of the conformance matrix failed
  in a way that hands the mail to an attacker (delivered where it must not, or in
  plaintext where TLS is mandatory);
- incomplete: the grace period after the first delivery is over and a
  must-deliver probe is still missing (or a must-refuse one failed on our side);
- pending: otherwise.

Beside it, what DNS shows (`diagnosis.DnsFacts`): which resolvers asked for the test's
names, whose TLSA records they fetched, whether they fetched the zone's DNSKEY.

No sentence is written here: `wording` turns these facts into words, once, for the
API and the page.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from havedane.diagnosis import DnsFacts, Finding, dns_facts
from havedane.dns.evidence import DnsEvidence
from havedane.model import Delivery, Outcome, Session, Test, Tls
from havedane.probes import Expect, Probe, Tlsa


class Status(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    REFUSED = "refused"
    NOT_DELIVERED = "not-delivered"


class Code(enum.StrEnum):
    PENDING = "pending"
    VALIDATES = "validates"
    VALIDATES_WITH_FLAWS = "validates-with-flaws"
    DOES_NOT_VALIDATE = "does-not-validate"
    NO_TLS = "no-tls"
    INCOMPLETE = "incomplete"


class Grade(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    PENDING = "pending"


class Reason(enum.StrEnum):
    """Why a probe got its grade (the API's `reason_code`; `wording.reason` says it)."""

    WAITING = "waiting"  # nothing decided yet
    DELIVERED = "delivered"
    DELIVERED_OVER_TLS = "delivered-over-tls"
    PLAINTEXT = "plaintext"  # delivered without TLS where TLS is mandatory (RFC 7672 §2.2)
    REFUSED = "refused"  # connected, was shown our certificate (or no STARTTLS) and left without MAIL
    NOTHING_ARRIVED = "nothing-arrived"  # a must-deliver probe, after the grace period
    STAYED_AWAY = "stayed-away"  # a must-refuse probe: nothing arrived, no refusal seen either
    DID_NOT_DELIVER = "did-not-deliver"  # a never-connect probe: nothing arrived
    NO_SNI = "no-sni"  # shown our default chain, not the probe's: it named no such host in SNI
    FAILED_HERE = "failed-here"  # the handshake failed on our side before the certificate was sent
    NO_CONTROL = "no-control"  # the positive control got nothing either
    FIRST_MX = "first-mx"  # delivered through the MX host that fails authentication
    WHICH_MX = "which-mx"  # delivered without naming an MX host in SNI: which one took it is unknown
    NO_FALLBACK = "no-fallback"  # left the failing MX host and never delivered through the next one


# A session that reached a probe, was shown our certificate and left without MAIL (after
# completing TLS, or by aborting the handshake): the behaviour of a DANE sender whose TLSA
# check failed (RFC 7672 §2.2). Not `tls-failed-here`: a handshake that failed before our
# certificate was sent, or in our stack, shows nothing about the sender (receiver.refused_after).
REFUSAL_OUTCOMES = {Outcome.TLS_THEN_LEFT, Outcome.HANDSHAKE_FAILED}


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    status: Status
    deliveries: tuple[Delivery, ...]
    sessions: tuple[Session, ...]
    refusal: Session | None  # the session that shows a refusal, if any
    correlated: bool  # the refusal is tied to the test by client address only
    competing: int = 0  # other tests from that address whose window holds the refusal too

    @property
    def over_tls(self) -> bool:
        return bool(self.deliveries) and all(d.tls is not None for d in self.deliveries)

    @property
    def failed_here(self) -> Session | None:
        """A session whose TLS handshake failed on our side: the sender tried, but was never
        shown the certificate, so its staying away proves nothing."""
        return next((s for s in self.sessions if s.outcome is Outcome.TLS_FAILED_HERE), None)

    def is_refusal(self, session: Session) -> bool:
        return is_refusal(session, self.probe)


@dataclass(frozen=True)
class Graded:
    grade: Grade
    reason: Reason
    # The failure hands the mail to an attacker or to anyone on the path: delivered where
    # a DANE sender must not, or in plaintext where TLS is mandatory.
    exposes: bool = False
    control: str | None = None  # NO_CONTROL: the control probe that got nothing

    @property
    def plaintext(self) -> bool:
        return self.reason is Reason.PLAINTEXT


@dataclass(frozen=True)
class Client:
    ip: str
    helo: str | None


@dataclass(frozen=True)
class Verdict:
    """The facts the headline, the summary and the page need. Probe names, in catalogue order."""

    code: Code
    probes: dict[str, ProbeResult]
    grades: dict[str, Graded]
    first_delivery: float | None
    grace_ends: float | None
    grace: float
    domain: str
    client: Client | None  # who sent the first delivery
    delivered: tuple[str, ...] = ()  # classic probes that got mail
    must_deliver: tuple[str, ...] = ()  # classic probes every sender must deliver to
    plaintext: tuple[str, ...] = ()  # classic, matching TLSA, delivered without TLS
    leaked: tuple[str, ...] = ()  # classic must-refuse probes that got mail
    missing: tuple[str, ...] = ()  # classic must-deliver probes without mail
    failed_here: tuple[str, ...] = ()  # classic must-refuse probes held back only by our TLS failure
    refused: tuple[str, ...] = ()  # classic must-refuse probes with a refusal seen
    stayed_away: tuple[str, ...] = ()  # classic must-refuse probes: nothing arrived, after the grace period
    waiting: tuple[str, ...] = ()  # classic probes still awaited
    flaws: tuple[str, ...] = ()  # matrix probes whose failure exposes the mail
    dns: DnsFacts = DnsFacts(Finding.NOT_AVAILABLE)
    alias: str = ""  # the test's: its hosts are <alias>.<probe>.<domain>

    def host(self, name: str) -> str:
        return self.probes[name].probe.host(self.domain, self.alias)

    def counts(self) -> dict[Grade, int]:
        """How many probes have each grade (every grade present, zero or not)."""
        grades = [g.grade for g in self.grades.values()]
        return {g: grades.count(g) for g in Grade}


def is_refusal(session: Session, probe: Probe) -> bool:
    """Left without MAIL: after completing (or aborting) TLS where STARTTLS is offered;
    right after EHLO where it is not (TLS required but not offered, RFC 7672 §2.2)."""
    if session.mail_from is not None:
        return False
    if probe.starttls:
        return session.starttls and session.outcome in REFUSAL_OUTCOMES
    return session.outcome is Outcome.LEFT


def reached(session: Session, probe: Probe, domain: str, alias: str) -> bool:
    """The session was for this probe: by its attribution, or by any recipient it named."""
    suffix = "@" + probe.host(domain, alias)
    return session.probe == probe.name or any(r.lower().endswith(suffix) for r in session.rcpts)


def probe_result(
    probe: Probe,
    sessions: list[Session],
    deliveries: list[Delivery],
    grace_over: bool,
    domain: str,
    competing: Mapping[str, int] | None = None,
    alias: str = "",
) -> ProbeResult:
    mine = tuple(s for s in sessions if reached(s, probe, domain, alias))
    delivered = tuple(d for d in deliveries if d.probe == probe.name)
    # Leaving an MX host that must be skipped is no refusal of the probe: the mail is
    # expected through the next one.
    refusal = next((s for s in mine if is_refusal(s, probe) and not at_first_mx(s.tls, probe, domain)), None)
    if delivered:
        status = Status.DELIVERED
    elif refusal is not None:
        status = Status.REFUSED
    elif grace_over:
        status = Status.NOT_DELIVERED
    else:
        status = Status.PENDING
    correlated = refusal is not None and refusal.alias is None
    others = (competing or {}).get(refusal.id, 0) if refusal is not None and correlated else 0
    return ProbeResult(probe, status, delivered, mine, refusal, correlated, others)


def _client(deliveries: list[Delivery]) -> Client | None:
    if not deliveries:
        return None
    first = min(deliveries, key=lambda d: d.received_at)
    return Client(first.client_ip, first.helo)


def _names(results: list[ProbeResult]) -> tuple[str, ...]:
    return tuple(r.probe.name for r in results)


def evaluate(
    probes: tuple[Probe, ...],
    test: Test,
    sessions: list[Session],
    deliveries: list[Delivery],
    now: float,
    grace: float,
    domain: str,
    competing: Mapping[str, int] | None = None,
    dns: DnsEvidence | None = None,
) -> Verdict:
    first = min((d.received_at for d in deliveries), default=None)
    grace_ends = None if first is None else first + grace
    grace_over = grace_ends is not None and now >= grace_ends
    results = {p.name: probe_result(p, sessions, deliveries, grace_over, domain, competing, test.alias) for p in probes}
    classic = [results[p.name] for p in probes if p.classic]

    must_deliver = [r for r in classic if r.probe.expect is Expect.DELIVER]
    must_refuse = [r for r in classic if r.probe.expect is not Expect.DELIVER]
    plaintext = [r for r in must_deliver if r.probe.tlsa is Tlsa.MATCH and r.deliveries and not r.over_tls]
    leaked = [r for r in must_refuse if r.status is Status.DELIVERED]
    missing = [r for r in must_deliver if r.status is not Status.DELIVERED]
    ours = [r for r in must_refuse if r.status is Status.NOT_DELIVERED and r.failed_here is not None]
    held = not ours and all(r.status in (Status.REFUSED, Status.NOT_DELIVERED) for r in must_refuse)
    grades = {name: grade(r, results, grace_over, domain, test.alias) for name, r in results.items()}
    # A corner case whose failure hands the mail to an attacker (or to anyone on the path)
    # outweighs the classic probes' good news: it is in the headline (issue 13).
    flaws = [r for r in results.values() if not r.probe.classic and grades[r.probe.name].exposes]

    code = _code(bool(plaintext), bool(leaked), bool(missing), held, bool(flaws), grace_over and bool(missing or ours))
    return Verdict(
        code=code,
        probes=results,
        grades=grades,
        first_delivery=first,
        grace_ends=grace_ends,
        grace=grace,
        domain=domain,
        client=_client(deliveries),
        delivered=_names([r for r in classic if r.status is Status.DELIVERED]),
        must_deliver=_names(must_deliver),
        plaintext=_names(plaintext),
        leaked=_names(leaked),
        missing=_names(missing),
        failed_here=_names(ours),
        refused=_names([r for r in must_refuse if r.status is Status.REFUSED]),
        stayed_away=_names([r for r in must_refuse if r.status is Status.NOT_DELIVERED]),
        waiting=_names(missing + [r for r in must_refuse if r.status is Status.PENDING]),
        flaws=_names(flaws),
        alias=test.alias,
        dns=_dns(code, _names(plaintext + leaked), probes, domain, dns, sessions, deliveries),
    )


def _code(plaintext: bool, leaked: bool, missing: bool, held: bool, flaws: bool, incomplete: bool) -> Code:
    """The headline, worst first: plaintext, then a leak, then success, then a verdict
    that can no longer change for the better, else still waiting."""
    if plaintext:
        return Code.NO_TLS
    if leaked:
        return Code.DOES_NOT_VALIDATE
    if not missing and held:
        return Code.VALIDATES_WITH_FLAWS if flaws else Code.VALIDATES
    return Code.INCOMPLETE if incomplete else Code.PENDING


def _dns(
    code: Code,
    against: tuple[str, ...],
    enabled: tuple[Probe, ...],
    domain: str,
    dns: DnsEvidence | None,
    sessions: list[Session],
    deliveries: list[Delivery],
) -> DnsFacts:
    """What DNS shows beside `code`; `against`: the classic probes delivered to against DANE."""
    validated = code in (Code.VALIDATES, Code.VALIDATES_WITH_FLAWS)
    clients = {s.client_ip for s in sessions} | {d.client_ip for d in deliveries}
    return dns_facts(against, validated, enabled, domain, dns, clients)


def saw_its_chain(result: ProbeResult, domain: str, alias: str) -> bool:
    """Whether the evidence for a probe with a chain of its own came from connections
    that were shown that chain. The chain the receiver recorded for the session decides
    (it chose it from the SNI, case-insensitively: DNS names are, RFC 4343; RFC 6066 §3);
    a delivery whose session is not at hand falls back to its SNI, compared the same way."""
    if result.probe.chain is None:
        return True
    host = result.probe.tls_host(domain, alias).lower()
    chains = {s.id: s.chain for s in result.sessions}
    evidence = [result.refusal] if result.refusal is not None else []

    def shown(chain: str | None, sni: str | None) -> bool:
        if chain is not None:
            return chain == result.probe.chain
        return sni is not None and sni.lower().rstrip(".") == host

    if any(shown(s.chain, s.tls.sni if s.tls else None) for s in evidence):
        return True
    return any(
        shown(chains.get(d.session_id) if d.session_id else None, d.tls.sni if d.tls else None)
        for d in result.deliveries
    )


def at_first_mx(tls: Tls | None, probe: Probe, domain: str) -> bool:
    """The session named, in SNI, the MX host that a DANE sender must skip."""
    first = probe.first_mx_host(domain)
    return first is not None and tls is not None and (tls.sni or "").lower().rstrip(".") == first


def _fallback(result: ProbeResult, domain: str) -> Graded | None:
    """A probe with an MX host to skip: which host the mail went through, by SNI (a DANE
    sender names the MX host, RFC 7672 §8.1). None where the generic grade applies."""
    probe = result.probe
    if probe.mx_first is None:
        return None
    if any(at_first_mx(d.tls, probe, domain) for d in result.deliveries):
        return Graded(Grade.FAIL, Reason.FIRST_MX, exposes=True)
    if result.status is Status.DELIVERED and any(d.tls is None or not d.tls.sni for d in result.deliveries):
        return Graded(Grade.INCONCLUSIVE, Reason.WHICH_MX)
    if result.status is Status.NOT_DELIVERED and any(at_first_mx(s.tls, probe, domain) for s in result.sessions):
        return Graded(Grade.FAIL, Reason.NO_FALLBACK)
    return None


def grade(
    result: ProbeResult, results: dict[str, ProbeResult], grace_over: bool, domain: str, alias: str = ""
) -> Graded:
    """One probe against what a correct DANE sender does there (the catalogue's `expect`)."""
    probe, status = result.probe, result.status
    if status is Status.DELIVERED and probe.tls_required and not result.over_tls:
        return Graded(Grade.FAIL, Reason.PLAINTEXT, exposes=True)
    if status in (Status.DELIVERED, Status.REFUSED) and not saw_its_chain(result, domain, alias):
        return Graded(Grade.INCONCLUSIVE, Reason.NO_SNI)
    if status is Status.NOT_DELIVERED and result.failed_here is not None:
        return Graded(Grade.INCONCLUSIVE, Reason.FAILED_HERE)
    fallback = _fallback(result, domain)
    if fallback is not None:
        return fallback
    control = results.get(probe.control) if probe.control else None
    if control is not None and control.status is not Status.DELIVERED and status is not Status.DELIVERED:
        if grace_over:
            return Graded(Grade.INCONCLUSIVE, Reason.NO_CONTROL, control=control.probe.name)
        return Graded(Grade.PENDING, Reason.WAITING)
    if probe.expect is Expect.DELIVER:
        if status is Status.DELIVERED:
            return Graded(Grade.PASS, Reason.DELIVERED_OVER_TLS if result.over_tls else Reason.DELIVERED)
        if status is Status.REFUSED:
            return Graded(Grade.FAIL, Reason.REFUSED)
        if status is Status.NOT_DELIVERED:
            return Graded(Grade.FAIL, Reason.NOTHING_ARRIVED)
        return Graded(Grade.PENDING, Reason.WAITING)
    if status is Status.DELIVERED:
        return Graded(Grade.FAIL, Reason.DELIVERED, exposes=True)
    if status is Status.REFUSED:
        return Graded(Grade.PASS, Reason.REFUSED)
    if status is Status.NOT_DELIVERED:
        # A must-refuse probe: the expected refusal was not seen, so say only what was (STAYED_AWAY).
        return Graded(Grade.PASS, Reason.STAYED_AWAY if probe.expect is Expect.REFUSE else Reason.DID_NOT_DELIVER)
    return Graded(Grade.PENDING, Reason.WAITING)

"""The verdict: a pure function of (probes, test, sessions, deliveries, now).

Per probe: pending -> delivered | refused | not-delivered. Overall, from the
classic probes' expectations in the catalogue (never from their names):

- no-tls: a probe with matching TLSA was delivered in plaintext (RFC 7672 §2.2
  makes TLS mandatory once usable TLSA records exist), so nothing was validated;
- does-not-validate: a probe a DANE sender must refuse was delivered;
- validates: every must-deliver probe arrived (TLSA-protected ones over TLS) and
  every must-refuse probe was refused or stayed away past the grace period;
- incomplete: the grace period after the first delivery is over and a
  must-deliver probe is still missing;
- pending: otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from havedane.model import Delivery, Outcome, Session, Test
from havedane.probes import Expect, Probe, Tlsa


class Status(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    REFUSED = "refused"
    NOT_DELIVERED = "not-delivered"


class Code(enum.StrEnum):
    PENDING = "pending"
    VALIDATES = "validates"
    DOES_NOT_VALIDATE = "does-not-validate"
    NO_TLS = "no-tls"
    INCOMPLETE = "incomplete"


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


@dataclass(frozen=True)
class Verdict:
    code: Code
    summary: str
    probes: dict[str, ProbeResult]
    first_delivery: float | None
    grace_ends: float | None
    grades: dict[str, Graded]
    conformance: str  # "Conforms on N of M probes." and each failure's consequence


class Grade(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    PENDING = "pending"


@dataclass(frozen=True)
class Graded:
    grade: Grade
    reason: str
    plaintext: bool = False  # failed by sending in cleartext where TLS is mandatory
    instead: str | None = None  # a pass that proves less than the catalogue's words (see stayed_away)

    def proves(self, probe: Probe) -> str | None:
        """What this grade proves about the sender, in the catalogue's words."""
        if self.grade is Grade.PASS:
            return self.instead or probe.proves_pass
        if self.grade is Grade.FAIL:
            return PLAINTEXT_CONSEQUENCE if self.plaintext else probe.proves_fail
        return None


PLAINTEXT_CONSEQUENCE = (
    "Your server sent mail in plaintext to a domain whose signed TLSA records make TLS mandatory "
    "(RFC 7672 §2.2): it does not apply DANE, and anyone on the path can read that mail."
)


def stayed_away(result: ProbeResult) -> str:
    """What a must-refuse probe that nothing was delivered to, and no session refused,
    shows: only that nothing arrived, not that the sender checked anything."""
    seen = "no connection to it showed a refusal" if result.sessions else "nothing connected to it"
    return (
        f"Nothing arrived here within the grace period, and {seen}. A DANE-validating server holds such mail "
        "back, so this is what one looks like, but it does not show that your server checked our certificate: "
        "a server that was never sent this message, or is holding it for another reason, looks the same."
    )


def is_refusal(session: Session, probe: Probe) -> bool:
    """Left without MAIL: after completing (or aborting) TLS where STARTTLS is offered;
    right after EHLO where it is not (TLS required but not offered, RFC 7672 §2.2)."""
    if session.mail_from is not None:
        return False
    if probe.starttls:
        return session.starttls and session.outcome in REFUSAL_OUTCOMES
    return session.outcome is Outcome.LEFT


def reached(session: Session, probe: Probe, domain: str) -> bool:
    """The session was for this probe: by its attribution, or by any recipient it named."""
    suffix = "@" + probe.host(domain)
    return session.probe == probe.name or any(r.lower().endswith(suffix) for r in session.rcpts)


def probe_result(
    probe: Probe,
    sessions: list[Session],
    deliveries: list[Delivery],
    grace_over: bool,
    domain: str,
    competing: Mapping[str, int] | None = None,
) -> ProbeResult:
    mine = tuple(s for s in sessions if reached(s, probe, domain))
    delivered = tuple(d for d in deliveries if d.probe == probe.name)
    refusal = next((s for s in mine if is_refusal(s, probe)), None)
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


def _client(deliveries: list[Delivery]) -> str:
    first = min(deliveries, key=lambda d: d.received_at)
    helo = f", HELO {first.helo}" if first.helo else ""
    return f"{first.client_ip}{helo}"


def _names(results: list[ProbeResult], domain: str) -> str:
    names = [r.probe.host(domain) for r in results]
    if not names:
        return "nothing"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _refusal_words(results: list[ProbeResult], domain: str) -> str:
    words = []
    for r in results:
        if r.refusal is None:
            continue
        how = "aborted the TLS handshake" if r.refusal.outcome is Outcome.HANDSHAKE_FAILED else (
            "completed TLS, saw our certificate and left without sending")  # fmt: skip
        tied = " (tied to this test by its client address)" if r.correlated else ""
        if r.competing:
            tied = (
                f" (tied to this test by its client address; it could also belong to another test sent from that "
                f"address at the same time: {r.competing} other test{'s' if r.competing > 1 else ''} waited for "
                "mail from it then)"
            )
        words.append(f"A server at {r.refusal.client_ip} connected to {r.probe.host(domain)}, {how}{tied}.")
    return " ".join(words)


def _failed_here_words(r: ProbeResult) -> str:
    s = r.failed_here
    return f"Our TLS error: {s.error}." if s is not None and s.error else ""


def evaluate(
    probes: tuple[Probe, ...],
    test: Test,
    sessions: list[Session],
    deliveries: list[Delivery],
    now: float,
    grace: float,
    domain: str,
    competing: Mapping[str, int] | None = None,
) -> Verdict:
    first = min((d.received_at for d in deliveries), default=None)
    grace_ends = None if first is None else first + grace
    grace_over = grace_ends is not None and now >= grace_ends
    results = {p.name: probe_result(p, sessions, deliveries, grace_over, domain, competing) for p in probes}
    classic = [results[p.name] for p in probes if p.classic]

    must_deliver = [r for r in classic if r.probe.expect is Expect.DELIVER]
    must_refuse = [r for r in classic if r.probe.expect is not Expect.DELIVER]
    plaintext = [r for r in must_deliver if r.probe.tlsa is Tlsa.MATCH and r.deliveries and not r.over_tls]
    leaked = [r for r in must_refuse if r.status is Status.DELIVERED]
    missing = [r for r in must_deliver if r.status is not Status.DELIVERED]
    ours = [r for r in must_refuse if r.status is Status.NOT_DELIVERED and r.failed_here is not None]
    held = not ours and all(r.status in (Status.REFUSED, Status.NOT_DELIVERED) for r in must_refuse)

    if plaintext:
        code = Code.NO_TLS
        summary = (
            f"Your mail server ({_client(deliveries)}) delivered to {_names(plaintext, domain)} without TLS, "
            "although that domain publishes signed TLSA records. A DANE-validating server must use TLS there "
            "(RFC 7672 §2.2), so your server does not validate DANE, and it does not even encrypt: anyone on "
            "the path can read its mail."
        )
    elif leaked:
        delivered = [r for r in classic if r.status is Status.DELIVERED]
        summary = (
            f"Your mail server ({_client(deliveries)}) delivered to {_names(delivered, domain)}. "
            f"It should not have delivered to {_names(leaked, domain)}: "
            + " ".join(r.probe.proves_fail for r in leaked)
        )
        code = Code.DOES_NOT_VALIDATE
    elif not missing and held:
        tls = ", ".join(
            f"{r.probe.host(domain)} over {r.deliveries[0].tls.version}" if r.deliveries[0].tls else
            f"{r.probe.host(domain)} without TLS"
            for r in must_deliver
        )  # fmt: skip
        refused = [r for r in must_refuse if r.status is Status.REFUSED]
        stayed = [r for r in must_refuse if r.status is Status.NOT_DELIVERED]
        parts = [f"Your mail server ({_client(deliveries)}) delivered to {tls}."]
        if refused:
            parts.append(_refusal_words(refused, domain))
        if stayed:
            seen = "" if any(r.sessions for r in stayed) else ", and nothing connected there"
            parts.append(
                f"Nothing arrived for {_names(stayed, domain)} within {grace:.0f} seconds of the first delivery"
                f"{seen}. That is what a DANE-validating server does, but staying away does not show that your "
                "server checked our certificate: a server that was never sent that message, or is holding it for "
                "another reason, looks the same. If you sent it, your server did not deliver where the TLSA "
                "records do not match our certificate, as a DANE-validating server must (RFC 7672)."
            )
        else:
            parts.append(
                "It refused where the TLSA records do not match our certificate: your server validates DANE (RFC 7672)."
            )
        parts.append("Expect a delay notice for the message it is still holding back; that is correct.")
        summary = " ".join(parts)
        code = Code.VALIDATES
    elif grace_over and ours and not missing:
        summary = (
            f"Your mail server ({_client(deliveries)}) delivered where it should. It also connected to "
            f"{_names(ours, domain)}, but the TLS handshake failed on our side before it was shown our "
            "certificate, and nothing arrived there: that proves nothing either way, so the test cannot conclude. "
            + " ".join(_failed_here_words(r) for r in ours)
        )
        code = Code.INCOMPLETE
    elif grace_over and missing:
        summary = (
            f"Your mail server ({_client(deliveries)}) delivered some of the messages, but nothing arrived for "
            f"{_names(missing, domain)} within {grace:.0f} seconds of the first delivery. Every server, validating "
            "or not, should deliver there, so the test cannot conclude: check your server's queue and logs for "
            "those addresses and try again."
        )
        code = Code.INCOMPLETE
    else:
        if first is None:
            summary = "Waiting for your mail: nothing has arrived yet."
        else:
            waiting = missing + [r for r in must_refuse if r.status is Status.PENDING]
            summary = (
                f"Mail is arriving from {_client(deliveries)}. Still waiting for "
                f"{_names(waiting, domain)}; the verdict comes when they arrive or {grace:.0f} seconds after the "
                "first delivery."
            )
        code = Code.PENDING
    grades = {name: grade(r, results, grace_over, domain) for name, r in results.items()}
    return Verdict(code, summary, results, first, grace_ends, grades, conformance(grades, results, domain))


def saw_its_chain(result: ProbeResult, domain: str) -> bool:
    """Whether the evidence for a probe with a chain of its own came from connections
    that were shown that chain. The chain the receiver recorded for the session decides
    (it chose it from the SNI, case-insensitively: DNS names are, RFC 4343; RFC 6066 §3);
    a delivery whose session is not at hand falls back to its SNI, compared the same way."""
    if result.probe.chain is None:
        return True
    host = result.probe.tls_host(domain).lower()
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


def grade(result: ProbeResult, results: dict[str, ProbeResult], grace_over: bool, domain: str) -> Graded:
    """One probe against what a correct DANE sender does there (the catalogue's `expect`)."""
    probe, status = result.probe, result.status
    if status is Status.DELIVERED and probe.tls_required and not result.over_tls:
        return Graded(Grade.FAIL, "delivered without TLS, where TLS is mandatory", plaintext=True)
    if status in (Status.DELIVERED, Status.REFUSED) and not saw_its_chain(result, domain):
        return Graded(Grade.INCONCLUSIVE, f"your server did not name {probe.tls_host(domain)} in SNI, so it was "
                      "shown our default certificate, not the one this probe is about")  # fmt: skip
    if status is Status.NOT_DELIVERED and result.failed_here is not None:
        return Graded(Grade.INCONCLUSIVE, "the TLS handshake failed on our side before your server was shown our "
                      "certificate, and nothing arrived: that proves nothing either way")  # fmt: skip
    control = results.get(probe.control) if probe.control else None
    if control is not None and control.status is not Status.DELIVERED and status is not Status.DELIVERED:
        if grace_over:
            return Graded(Grade.INCONCLUSIVE, f"no positive control: nothing arrived for {control.probe.host(domain)} "
                          "either, so staying away from here proves nothing")  # fmt: skip
        return Graded(Grade.PENDING, "waiting for mail")
    if probe.expect is Expect.DELIVER:
        if status is Status.DELIVERED:
            return Graded(Grade.PASS, "delivered" + (" over TLS" if result.over_tls else ""))
        if status is Status.REFUSED:
            return Graded(Grade.FAIL, "connected and refused to deliver")
        if status is Status.NOT_DELIVERED:
            return Graded(Grade.FAIL, "nothing arrived within the grace period")
        return Graded(Grade.PENDING, "waiting for mail")
    if status is Status.DELIVERED:
        return Graded(Grade.FAIL, "delivered")
    if status is Status.REFUSED:
        return Graded(Grade.PASS, "connected and refused to deliver")
    if status is Status.NOT_DELIVERED:
        if probe.expect is Expect.REFUSE:  # the expected refusal was not seen: say only what was
            reason = "nothing arrived within the grace period" + ("" if result.sessions else ", and nothing connected")
            return Graded(Grade.PASS, reason, instead=stayed_away(result))
        return Graded(Grade.PASS, "did not deliver" + (" (and never connected)" if not result.sessions else ""))
    return Graded(Grade.PENDING, "waiting for mail")


def conformance(grades: dict[str, Graded], results: dict[str, ProbeResult], domain: str) -> str:
    passed = sum(g.grade is Grade.PASS for g in grades.values())
    parts = [f"Conforms on {passed} of {len(grades)} probes."]
    for name, g in grades.items():
        if g.grade is Grade.FAIL:
            parts.append(f"{results[name].probe.host(domain)}: {g.reason}. {g.proves(results[name].probe)}")
    undecided = [results[n].probe.host(domain) for n, g in grades.items() if g.grade is Grade.INCONCLUSIVE]
    if undecided:
        parts.append(f"Inconclusive: {', '.join(undecided)}.")
    return " ".join(parts)

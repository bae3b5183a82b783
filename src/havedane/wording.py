"""Every sentence about a verdict, from the verdict's facts: the one place words are made.

The JSON API and the page both show these words; neither derives a rule of the verdict
on its own. What a grade proves stays data in the catalogue (`probes.Probe.proves_pass`,
`proves_fail`); this module picks which one applies and says the rest. No I/O.

House rules for the words (issue 13): a summary leads with one sentence and puts the
details after it; lists are joined with commas and "and"; a colon is followed by a
lower-case word; parentheses are called parentheses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from havedane import wording_mx
from havedane.diagnosis import Finding
from havedane.dns.evidence import ResolverFacts
from havedane.model import Outcome, Session, Tie
from havedane.probes import Expect, Tlsa
from havedane.verdict import Client, Code, Grade, Reason, Verdict

# The one wording of the plaintext consequence: the summary, the card and the table say it.
PLAINTEXT_CONSEQUENCE = (
    "Your server sent mail in plaintext to a domain whose signed TLSA records make TLS mandatory "
    "(RFC 7672 §2.2): it does not apply DANE, and anyone on the path can read that mail."
)

# (tone, title) per verdict code; the tone drives colour and icon (ok | bad | warn | wait).
HEADLINES = {
    Code.VALIDATES: ("ok", "Your server validates DANE"),
    Code.VALIDATES_WITH_FLAWS: ("warn", "Your server validates DANE, but a flaw exposes mail"),
    Code.DOES_NOT_VALIDATE: ("bad", "Your server does not validate DANE"),
    Code.NO_TLS: ("bad", "Your server sent mail without TLS"),
    Code.INCOMPLETE: ("warn", "The test could not conclude"),
    Code.PENDING: ("wait", "Waiting for your mail"),
}
ARRIVING = "Mail is arriving"


@dataclass(frozen=True)
class Headline:
    tone: str
    title: str


@dataclass(frozen=True)
class Summary:
    lead: str  # one sentence: the verdict in brief
    details: tuple[str, ...]  # what it rests on, one paragraph each

    @property
    def text(self) -> str:
        return " ".join((self.lead, *self.details))


@dataclass(frozen=True)
class Conformance:
    headline: str  # "Conforms on N of M probes", or while some wait "… of the D decided so far"
    tally: str  # what is not a pass, e.g. "1 fail, 8 still waiting"; empty when every probe passes
    tone: str
    text: str  # the headline, then each failure with its consequence (the API's `conformance`)


def join(items: Sequence[str]) -> str:
    """a; a and b; a, b and c."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def hosts(v: Verdict, names: Sequence[str]) -> str:
    return join([v.host(n) for n in names]) or "nothing"


def client(c: Client | None) -> str:
    if c is None:
        return "an unknown server"
    return f"{c.ip}, HELO {c.helo}" if c.helo else c.ip


def headline(v: Verdict) -> Headline:
    tone, title = HEADLINES[v.code]
    if v.code is Code.PENDING and any(r.sessions or r.deliveries for r in v.probes.values()):
        title = ARRIVING
    return Headline(tone, title)


def reason(v: Verdict, name: str) -> str:
    """Why the probe got its grade, as a clause (lower case, no final stop)."""
    g, r = v.grades[name], v.probes[name]
    match g.reason:
        case Reason.PLAINTEXT:
            return "delivered without TLS, where TLS is mandatory"
        case Reason.NO_SNI:
            return (
                f"your server did not name {r.probe.tls_host(v.domain, v.alias)} in SNI, so it was shown our default "
                "certificate, not the one this probe is about"
            )
        case Reason.FAILED_HERE:
            return (
                "the TLS handshake failed on our side before your server was shown our certificate, and nothing "
                "arrived, which proves nothing either way"
            )
        case Reason.NO_CONTROL:
            control = v.host(g.control) if g.control else "the control probe"
            return (
                f"no positive control: nothing arrived for {control} either, so staying away from here proves nothing"
            )
        case Reason.DELIVERED_OVER_TLS:
            return "delivered over TLS"
        case Reason.DELIVERED:
            return "delivered"
        case Reason.REFUSED:
            return "connected and refused to deliver"
        case Reason.NOTHING_ARRIVED:
            return "nothing arrived within the grace period"
        case Reason.STAYED_AWAY:
            return "nothing arrived within the grace period" + ("" if r.sessions else ", and nothing connected")
        case Reason.DID_NOT_DELIVER:
            return "did not deliver" + ("" if r.sessions else " (and never connected)")
    return wording_mx.reason(g.reason, r.probe, v.domain) or "waiting for mail"


def stayed_away(v: Verdict, name: str) -> str:
    """What a must-refuse probe that nothing was delivered to, and no session refused,
    shows: only that nothing arrived, not that the sender checked anything."""
    seen = "no connection to it showed a refusal" if v.probes[name].sessions else "nothing connected to it"
    return (
        f"Nothing arrived here within the grace period, and {seen}. A DANE-validating server holds such mail "
        "back, so this is what one looks like, but it does not show that your server checked our certificate: "
        "a server that was never sent this message, or is holding it for another reason, looks the same."
    )


def proves(v: Verdict, name: str) -> str | None:
    """What the grade proves about the sender: the catalogue's words, or less where less was seen."""
    g, probe = v.grades[name], v.probes[name].probe
    if g.grade is Grade.PASS:
        return stayed_away(v, name) if g.reason is Reason.STAYED_AWAY else probe.proves_pass
    if g.grade is Grade.FAIL:
        return PLAINTEXT_CONSEQUENCE if g.plaintext else probe.proves_fail
    return None


def refusal(v: Verdict, name: str, session: Session) -> str:
    """One sentence: a refusal seen at a probe, and how it is tied to the test."""
    r = v.probes[name]
    if session.outcome is Outcome.HANDSHAKE_FAILED:
        how = "aborted the TLS handshake"
    elif r.probe.starttls:
        how = "completed TLS, saw our certificate and left without sending"
    else:
        how = "found no STARTTLS and left without sending"
    tied = ""
    if session.tied_by is Tie.SNI:
        tied = ", tied to this test by the host it asked for in TLS (SNI)"
    elif session.alias is None:
        tied = ", tied to this test by its client address"
        if r.competing:
            others = f"{r.competing} other test{'s' if r.competing > 1 else ''}"
            tied += (
                f". It could also belong to another test sent from that address at the same time: {others} "
                "waited for mail from it then"
            )
    return f"A server at {session.client_ip} connected to {v.host(name)}, {how}{tied}."


def _delivered_over(v: Verdict) -> str:
    parts = []
    for name in v.must_deliver:
        d = v.probes[name].deliveries[0]
        parts.append(f"{v.host(name)} over {d.tls.version}" if d.tls else f"{v.host(name)} without TLS")
    return join(parts)


def _held(v: Verdict) -> list[str]:
    """The details of a validating verdict: the refusals seen, or what staying away shows."""
    details = [refusal(v, n, s) for n in v.refused if (s := v.probes[n].refusal) is not None]
    if v.stayed_away:
        seen = "" if any(v.probes[n].sessions for n in v.stayed_away) else ", and nothing connected there"
        details.append(
            f"Nothing arrived for {hosts(v, v.stayed_away)} within {v.grace:.0f} seconds of the first delivery{seen}. "
            "That is what a DANE-validating server does, but staying away does not show that your server checked "
            "our certificate: a server that was never sent that message, or is holding it for another reason, looks "
            "the same. If you sent it, your server did not deliver where the TLSA records do not match our "
            "certificate, as a DANE-validating server must (RFC 7672)."
        )
    else:
        details.append("It refused where the TLSA records do not match our certificate, as DANE requires (RFC 7672).")
    details.append("Expect a delay notice for the message it is still holding back; that is correct.")
    return details


def summary(v: Verdict) -> Summary:
    who = f"Your mail server ({client(v.client)})"
    match v.code:
        case Code.NO_TLS:
            lead = (
                f"{who} delivered to {hosts(v, v.plaintext)} without TLS, although that domain publishes signed "
                "TLSA records."
            )
            return Summary(lead, (PLAINTEXT_CONSEQUENCE,))
        case Code.DOES_NOT_VALIDATE:
            lead = f"{who} delivered to {hosts(v, v.leaked)}, where a DANE-validating server must not deliver."
            also = [n for n in v.delivered if n not in v.leaked]
            details = [f"It also delivered to {hosts(v, also)}, as it should."] if also else []
            return Summary(lead, (*details, *(v.probes[n].probe.proves_fail for n in v.leaked)))
        case Code.VALIDATES | Code.VALIDATES_WITH_FLAWS:
            if v.refused and not v.stayed_away:
                lead = f"{who} validates DANE: it delivered to {_delivered_over(v)}, and refused {hosts(v, v.refused)}."
            else:
                lead = f"{who} delivered to {_delivered_over(v)}, and nothing arrived for {hosts(v, v.stayed_away)}."
            details = _held(v)
            if v.code is Code.VALIDATES_WITH_FLAWS:
                lead = (
                    f"{who} passed the basic test, but it delivered to {hosts(v, v.flaws)}, where an attacker "
                    "can read the mail."
                )
                flaws = [f"{v.host(n)}: {proves(v, n)}" for n in v.flaws]
                details = [*flaws, f"The basic test: it delivered to {_delivered_over(v)}.", *_held(v)]
            return Summary(lead, tuple(details))
        case Code.INCOMPLETE if v.missing:
            lead = (
                f"The test cannot conclude: nothing arrived for {hosts(v, v.missing)} within {v.grace:.0f} seconds "
                "of the first delivery."
            )
            return Summary(lead, (
                f"{who} delivered some of the messages. Every server, validating or not, should deliver there: "
                "check your server's queue and logs for those addresses and try again.",
            ))  # fmt: skip
        case Code.INCOMPLETE:
            lead = (
                f"The test cannot conclude: the TLS handshake at {hosts(v, v.failed_here)} failed on our side before "
                "your server was shown our certificate."
            )
            errors = [f"Our TLS error: {s.error}." for n in v.failed_here if (s := v.probes[n].failed_here) and s.error]
            return Summary(lead, (
                f"{who} delivered where it should. Nothing arrived at {hosts(v, v.failed_here)}, which proves "
                "nothing either way.", *errors,
            ))  # fmt: skip
    if v.first_delivery is None:
        return Summary("Waiting for your mail: nothing has arrived yet.", ())
    return Summary(f"Mail is arriving from {client(v.client)}.", (
        f"Still waiting for {hosts(v, v.waiting)}: the verdict comes when "
        f"{'it arrives' if len(v.waiting) == 1 else 'they arrive'}, or {v.grace:.0f} seconds after the first "
        "delivery at the latest.",
    ))  # fmt: skip


# -- the conformance matrix -------------------------------------------------------------------

TALLY = {Grade.FAIL: "fail", Grade.INCONCLUSIVE: "inconclusive", Grade.PENDING: "still waiting"}


def conformance(v: Verdict) -> Conformance:
    counts = v.counts()
    total, waiting = len(v.grades), counts[Grade.PENDING]
    decided = total - waiting
    if decided == 0:
        head = f"Nothing decided yet on the {total} probes"
    elif waiting:
        head = f"Conforms on {counts[Grade.PASS]} of the {decided} probes decided so far"
    else:
        head = f"Conforms on {counts[Grade.PASS]} of {total} probes"
    if counts[Grade.FAIL]:
        tone = "bad"
    elif counts[Grade.INCONCLUSIVE]:
        tone = "warn"
    else:
        tone = "wait" if waiting else "ok"
    tally = ", ".join(f"{counts[g]} {word}" for g, word in TALLY.items() if counts[g])
    parts = [head + "."]
    for name, g in v.grades.items():
        if g.grade is Grade.FAIL:
            parts.append(f"{v.host(name)}: {reason(v, name)}. {proves(v, name)}")
    undecided = [n for n, g in v.grades.items() if g.grade is Grade.INCONCLUSIVE]
    if undecided:
        parts.append(f"Inconclusive: {hosts(v, undecided)}.")
    return Conformance(head, tally, tone, " ".join(parts))


def expected(expect: Expect, tls_required: bool, starttls: bool = True) -> str:
    """What a DANE-validating sender must do with a probe, as a sentence ending."""
    if expect is Expect.DELIVER:
        return "deliver the message over TLS" if tls_required else "deliver the message"
    if expect is Expect.REFUSE:  # where no STARTTLS is offered there is no certificate to check (RFC 7672 §2.2)
        check = "check our certificate against the TLSA records" if starttls else "find no STARTTLS"
        return f"connect, {check}, and refuse to send"
    return "not connect at all"


# -- what DNS shows (diagnosis.Finding) ------------------------------------------------------

NOT_AVAILABLE = (
    "DNS evidence is not available on this deployment: it reads no query log from its name servers, so this "
    "page cannot show which records your server's resolver looked up."
)
UNSEEN = (
    "A resolver that answers from its cache, or asks a name server whose queries we do not read, leaves nothing here."
)
# How to tell a non-DANE MTA from a DANE MTA behind a non-validating resolver, on the sender's
# side: the AD bit (RFC 4035 §3.2.3) in the resolver's answer, and Postfix's own two settings.
TELL_APART = (
    "To tell them apart on your server, ask the resolver it uses: dig +dnssec _25._tcp.{host} TLSA. "
    'If the flags of the answer include "ad", the resolver validates, and DANE is off in your mail server '
    "(Postfix needs smtp_dns_support_level = dnssec and smtp_tls_security_level = dane). "
    'Without "ad", the resolver does not validate, and a DANE server then skips DANE '
    '(Postfix logs "not DNSSEC validated").'
)
DO_BIT = "The queries had the DNSSEC OK bit set, which validating and non-validating resolvers both set."


def resolver(r: ResolverFacts) -> str:
    """A resolver by its address, and whether it is the mail server's own."""
    return f"{r.address} (the address your server connected from)" if r.is_client else r.address


def resolver_seen(v: Verdict, r: ResolverFacts) -> str:
    """One sentence: what one resolver asked for during this test."""
    said = f"The resolver at {resolver(r)} asked for this test's names"
    said += f" and looked up the TLSA records of {hosts(v, r.tlsa)}" if r.tlsa else ", and no TLSA records"
    if r.dnskey:
        said += ". It also fetched our DNSKEY records during the test (tied to it by its address and the time)"
    return said + "."


def resolvers(rs: Sequence[ResolverFacts]) -> str:
    return ("the resolvers " if len(rs) > 1 else "the resolver ") + join([resolver(r) for r in rs])


def diagnosis(v: Verdict) -> Summary:
    """What DNS shows, beside the verdict: what was seen, never more."""
    d = v.dns
    seen = tuple(resolver_seen(v, r) for r in d.resolvers)
    match d.finding:
        case Finding.NOT_AVAILABLE:
            return Summary(NOT_AVAILABLE, ())
        case Finding.NO_QUERIES:
            yet = " yet" if v.code is Code.PENDING else ""
            return Summary(f"No DNS query naming this test has reached our name servers{yet}.", (UNSEEN,))
        case Finding.VALIDATES:
            who = resolvers([r for r in d.resolvers if r.tlsa])
            return Summary(f"Your server's resolver looked up the TLSA records of {hosts(v, d.fetched)} ({who}).", seen)
        case Finding.VALIDATES_UNSEEN:
            return Summary("No TLSA lookup for this test reached our name servers.", (*seen, UNSEEN))
        case Finding.SEEN:
            return Summary(f"So far, {resolvers(d.resolvers)} asked for this test's names.", seen)
    return delivered_against(v, seen)


def delivered_against(v: Verdict, seen: tuple[str, ...]) -> Summary:
    """What DNS shows about a sender that delivered where DANE forbids it (`dns.about`)."""
    d = v.dns
    if d.finding is Finding.FETCHED_AND_DELIVERED:
        hit = [n for n in d.fetched if n in d.about]
        who = resolvers([r for r in d.resolvers if set(r.tlsa) & set(hit)])
        return Summary(
            f"Your server's resolver fetched the TLSA records of {hosts(v, hit)} ({who}), and your server "
            "delivered there anyway: it looked the records up and did not act on them.",
            seen,
        )
    if d.finding is Finding.FETCHED_ELSEWHERE:
        return Summary(
            f"Your server's resolver looked up the TLSA records of {hosts(v, d.fetched)}, but not those of "
            f"{hosts(v, d.about)}, where your server delivered.",
            seen,
        )
    if d.finding is Finding.RESOLVER_VALIDATES:
        return Summary(
            f"Your server's resolver validates DNSSEC ({resolvers(d.validating)} fetched our DNSKEY records), but "
            "no TLSA records were looked up for this test: DANE is not enabled in your mail server.",
            (*seen, "A DNSKEY fetch is what a validating resolver does; a non-validating one does not fetch it."),
        )
    return Summary(
        f"No TLSA records were looked up for this test, and {resolvers(d.resolvers)} was not seen fetching our "
        "DNSKEY records: either DANE is not enabled in your mail server, or its resolver does not validate "
        "DNSSEC.",
        (
            "From our side these two look the same: a DANE server whose resolver does not validate skips DANE.",
            *seen,
            "A resolver that already has our keys in its cache does not fetch them again, so the missing DNSKEY "
            "fetch alone does not show that it does not validate.",
            *([DO_BIT] if any(r.dnssec_ok for r in d.resolvers) else []),
            TELL_APART.format(host=dane_host(v)),
        ),
    )


def dane_host(v: Verdict) -> str:
    """The TLS host of a probe with matching TLSA records, to ask a resolver about: the probe's
    name, not the test's (a query for the test's name would be tied to it and change its finding)."""
    match = [r.probe for r in v.probes.values() if r.probe.tlsa is Tlsa.MATCH]
    probe = match[0] if match else next(iter(v.probes.values())).probe
    return probe.tls_host(v.domain)

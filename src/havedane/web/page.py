"""What the result page shows, laid out from the report's JSON (`report.to_json`).

The verdict's rules and words come with the JSON (`verdict` decides, `wording` says
it: a session's `refusal`, a probe's `reason_code`, `proves`, the verdict's `headline`
and `tone`, `conformance_detail`); this module only arranges them and names what a
session was seen doing. Every string from the network (HELO, MAIL FROM, SNI,
addresses) stays a plain value here and is escaped by Jinja, never joined into
markup; `breakable` adds only <wbr> between escaped parts.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from havedane import probes, report
from havedane.config import Config
from havedane.web import dnsview

HERE = Path(__file__).parent
NOSCRIPT_REFRESH = 15  # seconds: a pending page without JavaScript reloads itself this often
EXPECT_WORDS = {"deliver": "deliver", "refuse": "refuse to send", "never-connect": "not connect at all"}

# How a session ended, in the visitor's words (keys: store.base.Outcome values).
OUTCOMES = {
    "open": "is still connected",
    "delivered": "delivered and closed the connection",
    "tls-then-left": "completed TLS, saw our certificate and left without sending mail",
    # Since the receiver tells our own TLS failures apart, handshake-failed means the sender was
    # sent our certificate and then aborted: what it saw is known, that it validated it is not.
    "handshake-failed": "was sent our certificate, then aborted the TLS handshake before it completed",
    "tls-failed-here": "could not complete TLS with us: the handshake failed on our side before it was shown our "
    "certificate (no evidence either way)",
    "left": "left without sending mail",
    "rejected": "tried to send, but every recipient was refused",
    "timeout": "went silent; we closed the connection",
    "refused-busy": "was turned away: too many connections at that moment",
    "server-shutdown": "was still connected when our server restarted",
}
# A session that named the sender and its recipients but never sent DATA ends as "left" too.
LEFT_BEFORE_DATA = (
    "named the sender and a recipient (MAIL FROM, RCPT TO), then left before sending the message (no DATA)"
)


def session_words(s: dict[str, Any]) -> str:
    """How a session ended, in the visitor's words, claiming no more than it shows."""
    if s["outcome"] == "left" and s["mail_from"] is not None and s["rcpts"]:
        return LEFT_BEFORE_DATA
    return str(OUTCOMES.get(s["outcome"], s["outcome"]))


def tied_words(s: dict[str, Any]) -> str:
    """Why a session without a recipient of this test is shown with it (empty: it named one)."""
    if s["tied_by"] == "sni":
        return " (tied to this test by the name it asked for in TLS, SNI)"
    if not s["correlated_by_client_ip"]:
        return ""
    if s["competing_tests"]:
        return " (tied to this test by its client address; it could also belong to another test from that address)"
    return " (tied to this test by its client address)"


TIMELINE_LIMIT = 80  # beyond this, the middle of a long retry history is summarised


@dataclass(frozen=True)
class ProbeState:
    tone: str  # ok | bad | wait: drives the icon and the colour (never the only signal)
    label: str  # what happened, in two or three words
    judgement: str  # whether that is what a DANE-validating sender does
    proves: str | None


@dataclass(frozen=True)
class Event:
    at: str  # ISO 8601, UTC
    after: str  # time since the test was created, e.g. "+12 s"
    host: str | None  # the probe host, None for the test itself
    tone: str  # ok | bad | info
    text: str  # our own words
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, value from the network)


@dataclass(frozen=True)
class Timeline:
    events: list[Event]
    omitted: int  # events left out of the middle (see the JSON API)
    omitted_at: int  # index in `events` where they were left out


def timestamp(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def when(iso: str | None) -> str:
    """Server-side rendering of a time (the page's script shows it in local time)."""
    if iso is None:
        return ""
    return datetime.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(iso: str | None) -> str:
    if iso is None:
        return ""
    return datetime.datetime.fromisoformat(iso).strftime("%H:%M:%S")


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


TONES = {"pass": "ok", "fail": "bad", "inconclusive": "warn", "pending": "wait"}
LABELS = {"pending": "Waiting", "delivered": "Delivered", "refused": "Refused", "not-delivered": "Not delivered"}


def requires_tls(p: dict[str, Any]) -> bool:
    """A DANE sender must use TLS here (the catalogue says so: RFC 7672 §2.2)."""
    return bool(p["tls_required"])


def plaintext(p: dict[str, Any]) -> bool:
    """Failed by delivering without TLS where signed TLSA records make it mandatory (RFC 7672 §2.2)."""
    return bool(p["reason_code"] == "plaintext")


def probe_state(p: dict[str, Any]) -> ProbeState:
    """The card's headline, from the verdict's grade of the probe (pass, fail, inconclusive, pending)."""
    grade, reason = p["grade"]["grade"], p["grade"]["reason"]
    status = p["status"]
    tone, label = TONES.get(grade, "wait"), LABELS.get(status, status)
    if grade == "pending":
        return ProbeState(tone, label, "Nothing has arrived yet.", None)
    if grade == "inconclusive":
        return ProbeState(tone, label, f"Inconclusive: {reason}.", None)
    if grade == "pass":
        return ProbeState(tone, label, "As expected.", p["proves"])
    if plaintext(p):
        return ProbeState(tone, "Delivered without TLS", "A DANE-validating server must use TLS here.", p["proves"])
    if status == "delivered":
        return ProbeState(tone, label, "A DANE-validating server would not have sent this.", p["proves"])
    return ProbeState(tone, label, "A DANE-validating server delivers here.", p["proves"])


def refusals(p: dict[str, Any]) -> list[dict[str, Any]]:
    """Sessions the verdict counts as refusals at this probe, oldest first."""
    return sorted((s for s in p["sessions"] if s["refusal"]), key=lambda s: s["started"])


def other_sessions(p: dict[str, Any]) -> list[dict[str, Any]]:
    """Connections that neither delivered nor refused (e.g. left before TLS), oldest first."""
    refused = {s["id"] for s in refusals(p)}
    found = [s for s in p["sessions"] if s["outcome"] != "delivered" and s["id"] not in refused]
    return sorted(found, key=lambda s: s["started"])


def tls_text(tls: dict[str, Any] | None) -> str:
    return "none (plaintext)" if tls is None else tls["version"]


def facts(item: dict[str, Any]) -> list[tuple[str, str]]:
    """The connection details of a delivery or a session, as (label, value) pairs."""
    tls = item.get("tls")
    rows = [("Client IP", item["client_ip"]), ("HELO", item["helo"] or "(none)")]
    if "starttls" in item and not item["starttls"]:
        rows.append(("TLS", "not requested (no STARTTLS)"))
    elif "starttls" in item and tls is None:
        rows.append(("TLS", "handshake not completed"))  # asked for TLS: not plaintext by choice
    else:
        rows.append(("TLS", tls_text(tls)))
    if tls is not None:
        rows.append(("Cipher", tls["cipher"]))
        rows.append(("SNI", tls["sni"] or "(none sent)"))
    if item.get("mail_from") is not None:
        rows.append(("MAIL FROM", item["mail_from"] or "<>"))
    return rows


def timeline(r: dict[str, Any]) -> Timeline:
    """Sessions and deliveries of every probe, and the DNS queries, in time order, starting with the test itself."""
    created = timestamp(r["created"])
    rows: list[tuple[str, int, Event]] = []

    def add(at: str, order: int, host: str | None, tone: str, text: str, details: list[tuple[str, str]]) -> None:
        rows.append((at, order, Event(at, "+" + duration(timestamp(at) - created), host, tone, text, details)))

    add(r["created"], 0, None, "info", "Test created", [])
    seen: set[str] = set()
    for p in r["probes"].values():
        must_deliver = p["expect"] == "deliver"
        for s in p["sessions"]:
            if s["id"] in seen:
                continue
            seen.add(s["id"])
            details = [("from", s["client_ip"]), ("HELO", s["helo"] or "(none)")]
            if s["tls"] is not None:
                tls = s["tls"]
                details += [("TLS", f"{tls['version']} {tls['cipher']}"), ("SNI", tls["sni"] or "(none)")]
            elif s["starttls"]:
                details.append(("TLS", "handshake not completed"))
            else:
                details.append(("TLS", "not requested"))
            add(s["started"], 1, p["host"], "info", "Connection", details)
            if s["ended"] is not None and s["outcome"] != "delivered":
                refused = bool(s["refusal"])
                tone = "info" if not refused else ("bad" if must_deliver else "ok")
                text = "The server " + session_words(s)
                if refused:
                    text += tied_words(s)
                add(s["ended"], 3, p["host"], tone, text, [])
        for d in p["deliveries"]:
            if p["grade"]["grade"] == "inconclusive":
                tone, text = "info", "Message accepted (inconclusive: see the conformance table)"
            elif plaintext(p) and d["tls"] is None:
                tone, text = "bad", "Message accepted without TLS, although the TLSA records require it"
            elif p["exposes"]:
                tone, text = "bad", "Message accepted: a DANE-validating server would not have sent it"
            else:
                tone, text = "ok", "Message accepted"
            details = [("MAIL FROM", d["mail_from"] or "<>"), ("to", d["rcpt"]), ("TLS", tls_text(d["tls"]))]
            add(d["received_at"], 2, p["host"], tone, text, details)
    for q in dnsview.rows(r):
        add(q.at, 1, q.host, "info", q.text, q.facts)
    rows.sort(key=lambda row: (row[0], row[1]))
    events = [e for _, _, e in rows]
    if len(events) <= TIMELINE_LIMIT:
        return Timeline(events, 0, len(events))
    half = TIMELINE_LIMIT // 2
    return Timeline(events[:half] + events[-half:], len(events) - 2 * half, half)


def classic(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The probes that decide the headline verdict (the conformance matrix adds others)."""
    return {name: p for name, p in r["probes"].items() if p["classic"]}


def matrix(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: p for name, p in r["probes"].items() if not p["classic"]}


def refuse_hosts(r: dict[str, Any]) -> list[str]:
    """Every probe a DANE-validating server must not deliver to (the matrix's too, when it is on)."""
    return [p["host"] for p in r["probes"].values() if p["expect"] != "deliver"]


def held_hosts(r: dict[str, Any]) -> list[str]:
    """Must-not-deliver probes that nothing was delivered to: the sender is probably still holding those."""
    return [p["host"] for p in r["probes"].values() if p["expect"] != "deliver" and p["status"] != "delivered"]


def missing_hosts(r: dict[str, Any]) -> list[str]:
    return [p["host"] for p in classic(r).values() if p["expect"] == "deliver" and p["status"] != "delivered"]


def dane_host(r: dict[str, Any]) -> str:
    """A probe host with signed, matching TLSA records: the one to check a resolver against."""
    for p in r["probes"].values():
        if p["tlsa"] == "match":
            return str(p["host"])
    return str(next(iter(r["probes"].values()))["host"])


def join_names(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


# -- the conformance table: one row per probe ----------------------------------------------

GRADE_WORDS = {"pass": "Pass", "fail": "Fail", "inconclusive": "Inconclusive", "pending": "Pending"}
TABLE_EXPECT = {"deliver": "deliver", "refuse": "refuse", "never-connect": "never connect"}
# What a connection that did not deliver was seen doing, in a few words (keys: store.base.Outcome values).
SEEN_OUTCOMES = {
    "open": "connected, still open",
    "delivered": "delivered",
    "tls-then-left": "refused after TLS",
    "handshake-failed": "refused during the TLS handshake",
    "tls-failed-here": "TLS failed on our side",
    "left": "connected, left without sending",
    "rejected": "connected, recipient refused",
    "timeout": "connected, then went silent",
    "refused-busy": "turned away: we were busy",
    "server-shutdown": "connected, cut off by our restart",
}


@dataclass(frozen=True)
class Seen:
    text: str  # e.g. "delivered over TLSv1.3", "refused after TLS", "never connected"
    at: str | None  # ISO 8601: when it was seen
    note: str | None  # e.g. "no SNI", "3 messages"


@dataclass(frozen=True)
class Row:
    name: str
    host: str
    tests: str
    expected: str
    seen: Seen
    grade: str  # pass | fail | inconclusive | pending (the verdict's)
    word: str
    tone: str
    reason: str | None  # fail: the verdict's reason, as a sentence; inconclusive: "Cannot tell:"
    consequence: str | None  # fail: what it means for the sender's mail; inconclusive: the verdict's reason
    rfc: str
    classic: bool


@dataclass(frozen=True)
class Conformance:
    headline: str  # "Conforms on N of M probes", the first sentence of the report's "conformance"
    tone: str
    tally: str  # what is not a pass, e.g. "2 fail, 1 inconclusive"; empty when every probe passes


def sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _sni_note(tls: dict[str, Any] | None) -> list[str]:
    return ["no SNI"] if tls is not None and not tls["sni"] else []


def seen(p: dict[str, Any]) -> Seen:
    """What the sender was seen doing at a probe, in a few words."""
    deliveries = sorted(p["deliveries"], key=lambda d: d["received_at"])
    if deliveries:
        plain = [d for d in deliveries if d["tls"] is None]
        first = plain[0] if plain else deliveries[0]
        text = "delivered without TLS" if plain else f"delivered over {first['tls']['version']}"
        notes = _sni_note(first["tls"]) + ([f"{len(deliveries)} messages"] if len(deliveries) > 1 else [])
        return Seen(text, first["received_at"], ", ".join(notes) or None)
    sessions = sorted(p["sessions"], key=lambda s: s["started"])
    if not sessions:
        return Seen("never connected" if p["status"] == "not-delivered" else "nothing yet", None, None)
    tries = [f"{len(sessions)} connections"] if len(sessions) > 1 else []
    if p["status"] == "refused":
        refused = refusals(p)
        if refused:
            s = refused[0]
            # Where no STARTTLS is offered, leaving is the refusal (RFC 7672 §2.2).
            text = SEEN_OUTCOMES[s["outcome"]] if s["starttls"] else "left when no TLS was offered"
            return Seen(text, s["started"], ", ".join(_sni_note(s["tls"]) + tries) or None)
    s = sessions[-1]
    text = SEEN_OUTCOMES.get(s["outcome"], s["outcome"])
    if s["outcome"] == "left" and s["mail_from"] is not None and s["rcpts"]:
        text = "left after RCPT TO, before DATA"
    return Seen(text, s["started"], ", ".join(tries) or None)


def grade_row(name: str, p: dict[str, Any]) -> Row:
    grade, reason = p["grade"]["grade"], p["grade"]["reason"]
    failed, undecided = grade == "fail", grade == "inconclusive"
    expected = TABLE_EXPECT.get(p["expect"], p["expect"])
    if p["expect"] == "deliver" and requires_tls(p):
        expected = "deliver over TLS"
    return Row(
        name=name,
        host=p["host"],
        tests=p["tests"],
        expected=expected,
        seen=seen(p),
        grade=grade,
        word=GRADE_WORDS.get(grade, grade),
        tone=TONES.get(grade, "wait"),
        reason=sentence(reason) if failed else ("Cannot tell:" if undecided else None),
        consequence=p["proves"] if failed else (reason + "." if undecided else None),  # lower case after the colon
        rfc=p["rfc"],
        classic=bool(p["classic"]),
    )


def grade_rows(r: dict[str, Any]) -> list[Row]:
    """Every probe of the test, in catalogue order (a live update never moves a row)."""
    return [grade_row(name, p) for name, p in r["probes"].items()]


def conformance(r: dict[str, Any]) -> Conformance:
    c = r["conformance_detail"]
    return Conformance(c["headline"], c["tone"], c["tally"])


def breakable(text: str) -> markupsafe.Markup:
    """A host name or address that may break after its dots and its @, never inside a label:
    escaped parts joined by <wbr> (CSS keeps `overflow-wrap: normal` on them)."""
    parts = [part for part in re.split(r"(?<=[.@])", text) if part]
    return markupsafe.Markup("<wbr>").join(markupsafe.Markup("<span>%s</span>") % part for part in parts)


def static_url() -> Callable[[str], str]:
    """`static("app.js")` -> "/static/app.js?v=<digest>": a changed file gets a new URL, so no stale cache."""
    versions = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:10] for f in (HERE / "static").iterdir() if f.is_file()
    }

    def static(name: str) -> str:
        return f"/static/{name}?v={versions[name]}"

    return static


def environment(config: Config) -> jinja2.Environment:
    """The templates, with autoescaping on and the helpers above."""
    # auto_reload off: otherwise every render stats each template file (a fifth of a page's
    # build in the issue 12 profile); templates change only with a new release.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True,
        auto_reload=False,
    )  # fmt: skip
    env.globals.update(
        advice=lambda name: probes.CATALOGUE[name].advice if name in probes.CATALOGUE else "",
        probe_state=probe_state,
        refusals=refusals,
        other_sessions=other_sessions,
        facts=facts,
        timeline=timeline,
        refuse_hosts=refuse_hosts,
        held_hosts=held_hosts,
        grade_rows=grade_rows,
        conformance=conformance,
        missing_hosts=missing_hosts,
        classic=classic,
        matrix=matrix,
        dane_host=dane_host,
        join_names=join_names,
        outcomes=OUTCOMES,
        session_words=session_words,
        grace=config.grace,
        expect_words=EXPECT_WORDS,
        noscript_refresh=NOSCRIPT_REFRESH,
        domain=config.domain,
        probes=config.probes,
        static=static_url(),
    )
    env.filters.update(when=when, clock=clock, iso=report.iso, breakable=breakable)
    return env

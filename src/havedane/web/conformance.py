"""The result page's conformance table: one row per probe, graded by the verdict.

Laid out from the report's JSON like the cards (web.view): the grade, its reason and its
consequence come with the JSON; this module says in a few words what the sender was seen
doing at each probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from havedane.web.view import TONES, refusals, requires_tls

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

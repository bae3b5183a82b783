"""The result page's timeline: sessions, deliveries and DNS queries of every probe, in time order.

Laid out from the report's JSON like the cards (web.view): the rows say what was seen in
our own words, and every string from the network stays a plain (label, value) fact that
Jinja escapes.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from havedane.web import dnsview
from havedane.web.view import plaintext, session_words, tied_words, tls_text

TIMELINE_LIMIT = 80  # beyond this, the middle of a long retry history is summarised


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

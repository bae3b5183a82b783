"""The result page's view model: the probe cards, and the hosts the summary names.

Laid out from the report's JSON (`report.to_json`). The verdict's rules and words come
with the JSON (`verdict` decides, `wording` says it: a session's `refusal`, a probe's
`reason_code`, `proves`, the verdict's `headline` and `tone`); this module only arranges
them and names what a session was seen doing. Every string from the network (HELO, MAIL
FROM, SNI, addresses) stays a plain value here and is escaped by Jinja (web.page), never
joined into markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class ProbeState:
    tone: str  # ok | bad | wait: drives the icon and the colour (never the only signal)
    label: str  # what happened, in two or three words
    judgement: str  # whether that is what a DANE-validating sender does
    proves: str | None


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

"""The result page's words and structure, rendered from real verdicts (no browser needed)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from havedane import config as configmod
from havedane import report
from havedane.store.base import Delivery, Outcome, Session, Test, Tls
from havedane.verdict import evaluate
from havedane.web import page

DOMAIN = "x.test"
T0 = 1_800_000_000.0
CLIENT = "192.0.2.25"
TLS = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", None)
CONFIG = configmod.load(None, env={"HAVEDANE_DOMAIN": DOMAIN, "HAVEDANE_VERDICT_GRACE": "60"})
ENV = page.environment(CONFIG)


def delivery(probe: str, at: float, helo: str = "mx.sender.example", tls: Tls | None = TLS) -> Delivery:
    sni = Tls(tls.version, tls.cipher, f"{probe}.{DOMAIN}") if tls else None
    return Delivery("abc", probe, at, CLIENT, helo, "a@sender.example", f"abc@{probe}.{DOMAIN}", sni)


def refusal(n: int, at: float, outcome: Outcome = Outcome.TLS_THEN_LEFT) -> Session:
    tls = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", f"wrong.{DOMAIN}") if outcome is Outcome.TLS_THEN_LEFT else None
    return Session(
        f"s{n}", at, CLIENT, 40000 + n, "127.0.0.1", 25, ended=at + 0.2, helo="mx.sender.example",
        starttls=True, tls=tls, probe="wrong", outcome=outcome,
    )  # fmt: skip


def state(sessions: list[Session], deliveries: list[Delivery], now: float = T0 + 10) -> dict[str, Any]:
    test = Test("abc", T0, CLIENT)
    verdict = evaluate(CONFIG.probes, test, sessions, deliveries, now, CONFIG.grace, DOMAIN)
    return report.to_json(CONFIG, report.Report(test, verdict, now))


def render(r: dict[str, Any]) -> str:
    return ENV.get_template("result.html").render(r=r, state="s")


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_refusal_evidence_is_tied_by_client_address_and_counts_retries() -> None:
    r = state([refusal(1, T0 + 3), refusal(2, T0 + 300), refusal(3, T0 + 900)], [
        delivery("do", T0 + 1), delivery("dont", T0 + 2)])  # fmt: skip
    assert r["verdict"]["code"] == "validates"
    words = text(render(r))
    assert f"Your server at {CLIENT} connected to wrong.{DOMAIN} at" in words
    assert "saw our certificate, and refused to send" in words
    assert "It came back 2 more times and refused again" in words
    assert "Tied to your test by client address" in words and f"we match it by {CLIENT}" in words
    assert "What happens now" in words and "delay notice" in words
    assert "What to do next" not in words


def test_a_handshake_abort_is_a_refusal_too() -> None:
    r = state([refusal(1, T0 + 3, Outcome.HANDSHAKE_FAILED)], [delivery("do", T0 + 1), delivery("dont", T0 + 2)])
    words = text(render(r))
    assert "aborted the TLS handshake after seeing our certificate, and sent nothing" in words
    assert "handshake not completed" in words  # the timeline


def test_network_strings_are_escaped() -> None:
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    html = render(state([], [delivery("do", T0 + 1, helo=hostile)]))
    assert "<script>alert" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in html


def refusal_at(probe: str, at: float) -> Session:
    s = refusal(9, at)
    s.probe = probe
    return s


LATE = T0 + 120  # after the grace period
PROBE_STATES = [
    ("do", [], [], T0 + 10, "wait", "Waiting"),
    ("do", [], [delivery("do", T0 + 1)], T0 + 10, "ok", "Delivered"),
    ("do", [], [delivery("do", T0 + 1, tls=None)], T0 + 10, "bad", "Delivered without TLS"),
    ("do", [refusal_at("do", T0 + 2)], [delivery("dont", T0 + 1)], LATE, "bad", "Refused"),
    ("do", [], [delivery("dont", T0 + 1)], LATE, "bad", "Not delivered"),
    ("wrong", [], [delivery("do", T0 + 1), delivery("wrong", T0 + 1)], T0 + 10, "bad", "Delivered"),
    ("wrong", [refusal(1, T0 + 2)], [delivery("do", T0 + 1)], T0 + 10, "ok", "Refused"),
    ("wrong", [], [delivery("do", T0 + 1), delivery("dont", T0 + 1)], LATE, "ok", "Not delivered"),
]


@pytest.mark.parametrize(("probe", "sessions", "deliveries", "now", "tone", "label"), PROBE_STATES)
def test_probe_state(
    probe: str, sessions: list[Session], deliveries: list[Delivery], now: float, tone: str, label: str
) -> None:
    st = page.probe_state(state(sessions, deliveries, now)["probes"][probe])
    assert (st.tone, st.label) == (tone, label)


def test_timeline_is_in_time_order_and_summarises_long_retry_histories() -> None:
    retries = [refusal(n, T0 + 60 * n) for n in range(1, 101)]
    r = state(retries, [delivery("dont", T0 + 2), delivery("do", T0 + 1)])
    tl = page.timeline(r)
    assert tl.omitted == 1 + 2 + 100 * 2 - page.TIMELINE_LIMIT  # created, 2 deliveries, 100 sessions (start, end)
    assert [e.at for e in tl.events] == sorted(e.at for e in tl.events)
    assert tl.events[0].text == "Test created"
    assert tl.events[1].host == f"do.{DOMAIN}" and tl.events[1].text == "Message accepted"
    assert "more events in between" in text(render(r))


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(0.04, "0.0 s"), (3.25, "3.2 s"), (42, "42 s"), (60, "1 min"), (125, "2 min 5 s"), (7200, "2 h"),
     (7500, "2 h 5 min"), (3 * 86400 + 7200, "3 d 2 h")],
)  # fmt: skip
def test_duration(seconds: float, words: str) -> None:
    assert page.duration(seconds) == words


def test_every_verdict_renders_its_title() -> None:
    cases = {
        "pending": state([], []),
        "validates": state([refusal(1, T0 + 3)], [delivery("do", T0 + 1), delivery("dont", T0 + 2)]),
        "does-not-validate": state([], [delivery(p, T0 + 1) for p in ("do", "dont", "wrong")]),
        "no-tls": state([], [delivery("do", T0 + 1, tls=None)]),
        "incomplete": state([], [delivery("do", T0 + 1)], now=T0 + 120),
    }
    for code, r in cases.items():
        assert r["verdict"]["code"] == code
        assert page.VERDICTS[code][1] in text(render(r))


def palettes() -> dict[str, dict[str, str]]:
    css = (page.HERE / "static" / "style.css").read_text()
    light, dark = re.findall(r":root \{([^}]*)\}", css)[:2]
    pattern = r"--([a-z-]+):\s*(#[0-9a-f]{3,6})"
    return {"light": dict(re.findall(pattern, light)), "dark": dict(re.findall(pattern, dark))}


def luminance(colour: str) -> float:
    digits = colour.lstrip("#")
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    channels = [int(digits[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_colours_meet_wcag_aa(scheme: str) -> None:
    c = palettes()[scheme]
    pairs = [("fg", "bg"), ("fg", "panel"), ("muted", "bg"), ("muted", "panel")]
    pairs += [("accent", "bg"), ("accent-fg", "accent")]
    for tone in ("ok", "bad", "warn", "wait"):
        pairs += [(tone, f"{tone}-bg"), (tone, "bg"), ("fg", f"{tone}-bg"), ("muted", f"{tone}-bg")]
    low = {f"{a} on {b}": round(contrast(c[a], c[b]), 2) for a, b in pairs if contrast(c[a], c[b]) < 4.5}
    assert low == {}


def test_the_conformance_matrix_has_its_own_section() -> None:
    env = {"HAVEDANE_DOMAIN": DOMAIN, "HAVEDANE_PROBES_MATRIX": "true",
           "HAVEDANE_PROBES_ADDRESSES": "notls=192.0.2.8,unusable-notls=192.0.2.9"}  # fmt: skip
    config = configmod.load(None, env=env)
    test = Test("abc", T0, CLIENT)
    deliveries = [delivery("do", T0 + 1), delivery("dont", T0 + 2)]
    verdict = evaluate(config.probes, test, [refusal(1, T0 + 3)], deliveries, T0 + 10, config.grace, DOMAIN)
    r = report.to_json(config, report.Report(test, verdict, T0 + 10))
    html = page.environment(config).get_template("result.html").render(r=r, state="s")
    headline, conformance = html.split('id="matrix-h"')
    assert 'id="probe-do"' in headline and 'id="probe-ee"' not in headline
    assert all(f'id="probe-{name}"' in conformance for name in page.matrix(r))
    assert r["conformance"] in text(html)
    assert "Your server validates DANE" in text(headline)

"""The result page's words and structure, rendered from real verdicts (no browser needed)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from havedane import config as configmod
from havedane import probes, report, wording
from havedane.model import Delivery, Outcome, Session, Test, Tls
from havedane.verdict import Code, evaluate
from havedane.web import conformance, page, timeline, view

DOMAIN = "x.test"
T0 = 1_800_000_000.0
CLIENT = "192.0.2.25"
TLS = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", None)
CONFIG = configmod.load(None, env={"HAVEDANE_DOMAIN": DOMAIN, "HAVEDANE_VERDICT_GRACE": "60"})
ENV = page.environment(CONFIG)


def delivery(probe: str, at: float, helo: str = "mx.sender.example", tls: Tls | None = TLS) -> Delivery:
    sni = Tls(tls.version, tls.cipher, f"abc.{probe}.{DOMAIN}") if tls else None  # the test's host there
    return Delivery("abc", probe, at, CLIENT, helo, "a@sender.example", f"test@abc.{probe}.{DOMAIN}", sni)


def refusal(n: int, at: float, outcome: Outcome = Outcome.TLS_THEN_LEFT) -> Session:
    tls = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", None) if outcome is Outcome.TLS_THEN_LEFT else None
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
    """What a reader sees: the parts of a breakable host name (<span>…</span><wbr>) join up."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<wbr>|</?span>", "", html)))


def test_refusal_evidence_is_tied_by_client_address_and_counts_retries() -> None:
    r = state([refusal(1, T0 + 3), refusal(2, T0 + 300), refusal(3, T0 + 900)], [
        delivery("do", T0 + 1), delivery("dont", T0 + 2)])  # fmt: skip
    assert r["verdict"]["code"] == "validates"
    words = text(render(r))
    assert f"Your server at {CLIENT} connected to abc.wrong.{DOMAIN} at" in words
    assert "saw our certificate, and refused to send" in words
    assert "It came back 2 more times and refused again" in words
    assert "Tied to your test by client address" in words and f"we match it by {CLIENT}" in words
    assert "What happens now" in words and "delay notice" in words
    assert "What to do next" not in words


def test_a_handshake_abort_is_a_refusal_too() -> None:
    r = state([refusal(1, T0 + 3, Outcome.HANDSHAKE_FAILED)], [delivery("do", T0 + 1), delivery("dont", T0 + 2)])
    words = text(render(r))
    assert "aborted the TLS handshake before it completed, and sent nothing" in words
    assert "handshake not completed" in words  # the timeline


def test_network_strings_are_escaped() -> None:
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    html = render(state([], [delivery("do", T0 + 1, helo=hostile)]))
    assert "<script>alert" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in html


def test_refusal_evidence_tied_by_sni_says_so() -> None:
    """A DANE sender named the test's own host in SNI: the page says that tie, not the address."""
    sni = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", f"abc.wrong.{DOMAIN}")
    tied = dataclasses.replace(refusal(1, T0 + 3), alias="abc", tls=sni)
    r = state([tied], [delivery("do", T0 + 1), delivery("dont", T0 + 2)])
    [s] = r["probes"]["wrong"]["sessions"]
    assert (s["tied_by"], s["correlated_by_client_ip"]) == ("sni", False)
    words = text(render(r))
    said = f"Tied to your test by the name it asked for in TLS (SNI): abc.wrong.{DOMAIN} is this test's own host"
    assert said in words
    assert "by client address" not in words


def refusal_at(probe: str, at: float) -> Session:
    return dataclasses.replace(refusal(9, at), probe=probe)


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
    st = view.probe_state(state(sessions, deliveries, now)["probes"][probe])
    assert (st.tone, st.label) == (tone, label)


def test_timeline_is_in_time_order_and_summarises_long_retry_histories() -> None:
    retries = [refusal(n, T0 + 60 * n) for n in range(1, 101)]
    r = state(retries, [delivery("dont", T0 + 2), delivery("do", T0 + 1)])
    tl = timeline.timeline(r)
    assert tl.omitted == 1 + 2 + 100 * 2 - timeline.TIMELINE_LIMIT  # created, 2 deliveries, 100 sessions (start, end)
    assert [e.at for e in tl.events] == sorted(e.at for e in tl.events)
    assert tl.events[0].text == "Test created"
    assert tl.events[1].host == f"abc.do.{DOMAIN}" and tl.events[1].text == "Message accepted"
    assert "more events in between" in text(render(r))


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(0.04, "0.0 s"), (3.25, "3.2 s"), (42, "42 s"), (60, "1 min"), (125, "2 min 5 s"), (7200, "2 h"),
     (7500, "2 h 5 min"), (3 * 86400 + 7200, "3 d 2 h")],
)  # fmt: skip
def test_duration(seconds: float, words: str) -> None:
    assert timeline.duration(seconds) == words


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
        assert wording.HEADLINES[Code(code)][1] in text(render(r))


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


MATRIX_CONFIG = configmod.load(None, env={
    "HAVEDANE_DOMAIN": DOMAIN, "HAVEDANE_PROBES_MATRIX": "true",
    "HAVEDANE_PROBES_ADDRESSES": "notls=192.0.2.8,unusable-notls=192.0.2.9,ta-notls=192.0.2.10"})  # fmt: skip
MATRIX_ENV = page.environment(MATRIX_CONFIG)


def session(probe: str, at: float, outcome: Outcome, tls: Tls | None = TLS, starttls: bool = True) -> Session:
    return Session(
        f"s-{probe}-{at}", at, CLIENT, 40000, "127.0.0.1", 25, ended=at + 0.2, helo="mx.sender.example",
        starttls=starttls, tls=tls, probe=probe, outcome=outcome,
    )  # fmt: skip


def matrix_state(sessions: list[Session], deliveries: list[Delivery], now: float = T0 + 10) -> dict[str, Any]:
    test = Test("abc", T0, CLIENT)
    verdict = evaluate(MATRIX_CONFIG.probes, test, sessions, deliveries, now, MATRIX_CONFIG.grace, DOMAIN)
    return report.to_json(MATRIX_CONFIG, report.Report(test, verdict, now))


def test_the_matrix_is_a_table_below_the_classic_cards() -> None:
    deliveries = [delivery("do", T0 + 1), delivery("dont", T0 + 2), delivery("ta-rogue", T0 + 3)]
    r = matrix_state([refusal(1, T0 + 3)], deliveries)
    html = MATRIX_ENV.get_template("result.html").render(r=r, state="s")
    top, table = html.split('id="matrix-h"')
    # ta-rogue delivered: an attacker on the path can read that mail, so it is in the headline itself
    # (issue 13), with a warning tone, not under a green banner
    assert r["verdict"]["code"] == "validates-with-flaws" and r["verdict"]["tone"] == "warn"
    assert 'class="verdict tone-warn"' in top and "tone-ok" not in top.split('class="verdict', 1)[1].split(">")[0]
    assert "Your server validates DANE, but a flaw exposes mail" in text(top)
    assert f"delivered to abc.ta-rogue.{DOMAIN}, where an attacker can read the mail" in r["verdict"]["lead"]
    assert all(f'id="probe-{name}"' in top for name in view.classic(r))
    assert 'id="probe-ee"' not in html  # no cards for the matrix: rows
    assert all(f'id="row-{name}"' in table for name in r["probes"])
    waiting = len(probes.CATALOGUE) - 4
    assert "Conforms on 3 of the 4 probes decided so far" in text(table)
    assert f"(1 fail, {waiting} still waiting)" in text(table)
    assert "Conforms on 3 of the 4 probes decided so far" in text(top)  # and a pointer to it under the verdict
    assert 'style="' not in html and "<script" not in html  # nothing the CSP would block
    assert 'id="why-ta-rogue"' in table and 'id="why-ee"' not in table


def test_without_the_matrix_there_is_no_table() -> None:
    html = render(state([], [delivery("do", T0 + 1)]))
    assert "<table" not in html and "Conforms on" not in html
    assert "What each address received" in text(html)


def row(r: dict[str, Any], name: str) -> conformance.Row:
    return conformance.grade_row(name, r["probes"][name])


BADNAME_TLS = Tls("TLSv1.2", "ECDHE", f"abc.ta-badname.{DOMAIN}")
ROGUE_TLS = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", f"abc.ta-rogue.{DOMAIN}")


def test_rows_say_what_was_seen_and_why_it_fails() -> None:
    plain = Delivery("abc", "unusable-notls", T0 + 4, CLIENT, "mx", "a@s", f"abc@unusable-notls.{DOMAIN}", None)
    r = matrix_state(
        [
            session("notls", T0 + 3, Outcome.LEFT, tls=None, starttls=False),
            session("ta-expired", T0 + 3, Outcome.HANDSHAKE_FAILED, tls=None),
            session("ta-badname", T0 + 5, Outcome.TLS_THEN_LEFT, tls=BADNAME_TLS),
        ],
        [delivery("do", T0 + 1), plain, delivery("ta", T0 + 2), delivery("ta", T0 + 6)],
    )
    notls = row(r, "notls")
    assert (notls.grade, notls.seen.text, notls.expected, notls.reason) == ("pass", "left when no TLS was offered",
                                                                           "refuse", None)  # fmt: skip
    assert row(r, "ta-expired").seen.text == "refused during the TLS handshake"
    assert row(r, "ta-badname").seen.text == "refused after TLS"
    ta = row(r, "ta")
    assert (ta.seen.text, ta.seen.note, ta.expected) == ("delivered over TLSv1.3", "2 messages", "deliver over TLS")
    assert (ta.word, ta.tone) == ("Pass", "ok")
    unusable = row(r, "unusable-notls")
    assert (unusable.grade, unusable.seen.text, unusable.tone) == ("fail", "delivered without TLS", "bad")
    assert unusable.reason == "Delivered without TLS, where TLS is mandatory."
    assert unusable.consequence is not None and "plaintext" in unusable.consequence
    bogus = row(r, "bogus")
    assert (bogus.grade, bogus.seen.text, bogus.expected) == ("pending", "nothing yet", "never connect")
    assert row(r, "unsigned").expected == "deliver"  # no DNSSEC, so TLS is not mandatory there


def test_rows_after_the_grace_period_and_without_sni() -> None:
    no_sni = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", None)
    deliveries = [
        delivery("do", T0 + 1),
        delivery("dont", T0 + 1),
        Delivery("abc", "ta-badname", T0 + 2, CLIENT, "mx", "a@s", f"t@abc.ta-badname.{DOMAIN}", no_sni),
        Delivery("abc", "ta-rogue", T0 + 2, CLIENT, "mx", "a@s", f"t@abc.ta-rogue.{DOMAIN}", ROGUE_TLS),
    ]
    r = matrix_state([], deliveries, now=LATE)
    badname = row(r, "ta-badname")
    assert (badname.grade, badname.word, badname.tone) == ("inconclusive", "Inconclusive", "warn")
    assert badname.seen.note == "no SNI"
    assert badname.reason == "Cannot tell:" and badname.consequence is not None
    assert f"did not name abc.ta-badname.{DOMAIN} in SNI" in badname.consequence
    events = {e.host: e for e in timeline.timeline(r).events if e.text.startswith("Message accepted")}
    assert events[f"abc.ta-badname.{DOMAIN}"].tone == "info"  # not called wrong in the timeline either
    assert events[f"abc.ta-rogue.{DOMAIN}"].tone == "bad"
    rogue = row(r, "ta-rogue")
    assert rogue.reason == "Delivered." and rogue.consequence is not None
    assert "does not lead to your trust anchor: an attacker on the path can read your mail" in rogue.consequence
    ee = row(r, "ee")
    assert (ee.grade, ee.seen.text) == ("fail", "never connected")
    assert ee.reason == "Nothing arrived within the grace period."
    bogus = row(r, "bogus")
    assert (bogus.grade, bogus.seen.text) == ("pass", "never connected")
    c = conformance.conformance(r)
    passed = sum(p["grade"]["grade"] == "pass" for p in r["probes"].values())
    assert c.headline == f"Conforms on {passed} of {len(probes.CATALOGUE)} probes"
    assert r["conformance"].startswith(c.headline + ".")
    assert c.tone == "bad" and "1 inconclusive" in c.tally and "still waiting" not in c.tally


def test_conformance_headline_tone() -> None:
    assert conformance.conformance(matrix_state([], [])).tone == "wait"
    assert conformance.conformance(matrix_state([], [])).tally == f"{len(probes.CATALOGUE)} still waiting"


def test_every_session_outcome_has_words() -> None:
    from havedane.model import Outcome
    from havedane.web import conformance, view

    for outcome in Outcome:
        assert outcome.value in view.OUTCOMES and outcome.value in conformance.SEEN_OUTCOMES, outcome


# -- words that claim only what was seen (issue 11, item 7) -----------------------------------


def card(html: str, name: str) -> str:
    return text(html.split(f'id="probe-{name}"', 1)[1].split("</article>", 1)[0])


def test_nothing_at_wrong_is_not_called_a_certificate_check() -> None:
    # The visitor forgot to mail `wrong`: nothing connected there at all.
    r = state([], [delivery("do", T0 + 1), delivery("dont", T0 + 2)], now=T0 + 120)
    wrong = r["probes"]["wrong"]
    assert wrong["grade"]["grade"] == "pass" and r["verdict"]["code"] == "validates"
    for claim in (wrong["proves"], r["verdict"]["summary"], card(render(r), "wrong")):
        assert "checked our certificate" not in claim.replace("does not show that your server checked our", "")
        assert "does not show that your server checked our certificate" in claim
    assert "Nothing arrived" in card(render(r), "wrong") and "nothing connected" in wrong["proves"]


def test_a_refusal_seen_is_still_called_a_certificate_check() -> None:
    r = state([refusal(1, T0 + 3)], [delivery("do", T0 + 1), delivery("dont", T0 + 2)])
    assert "checked our certificate against the TLSA records and refused" in r["probes"]["wrong"]["proves"]
    assert "does not show" not in r["verdict"]["summary"]


def test_mail_and_rcpt_without_data_is_not_called_leaving_without_sending() -> None:
    s = dataclasses.replace(
        refusal(1, T0 + 3), mail_from="a@sender.example", rcpts=(f"abc@wrong.{DOMAIN}",), outcome=Outcome.LEFT
    )
    r = state([s], [delivery("do", T0 + 1), delivery("dont", T0 + 2)], now=T0 + 120)
    words = card(render(r), "wrong")
    assert "left without sending mail" not in words
    assert "named the sender and a recipient (MAIL FROM, RCPT TO), then left before sending the message" in words
    assert conformance.seen(r["probes"]["wrong"]).text == "left after RCPT TO, before DATA"
    assert any("before sending the message" in e.text for e in timeline.timeline(r).events)


def test_an_aborted_handshake_claims_no_certificate_seen() -> None:
    r = state([refusal(1, T0 + 3, Outcome.HANDSHAKE_FAILED)], [delivery("do", T0 + 1), delivery("dont", T0 + 2)])
    words = card(render(r), "wrong")
    assert "after seeing our certificate" not in words and "saw our certificate" not in words
    assert "aborted the TLS handshake before it completed" in words
    assert "TLS handshake not completed" in words and "none (plaintext)" not in words


def test_a_refusal_two_tests_compete_for_says_so() -> None:
    test = Test("abc", T0, CLIENT)
    sessions, deliveries = [refusal(1, T0 + 3)], [delivery("do", T0 + 1), delivery("dont", T0 + 2)]
    verdict = evaluate(CONFIG.probes, test, sessions, deliveries, T0 + 10, CONFIG.grace, DOMAIN, {"s1": 1})
    r = report.to_json(CONFIG, report.Report(test, verdict, T0 + 10, {"s1": 1}))
    assert r["probes"]["wrong"]["sessions"][0]["competing_tests"] == 1
    html = render(r)
    assert "could also belong to 1 other test" in card(html, "wrong")
    assert any("could also belong to another test" in e.text for e in timeline.timeline(r).events)
    assert "could also belong to another test" in r["verdict"]["summary"]

"""The words a new user saw (issue 13), rendered from real verdicts without a browser.

Each test names what was wrong before: the page re-derived the verdict's rules, and
the words were too long, badly joined or not there at all.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from havedane import probes, wording
from havedane.model import Delivery, Outcome, Tls
from havedane.web import conformance, page, timeline, view

from .test_page_model import (
    CLIENT,
    DOMAIN,
    ENV,
    T0,
    delivery,
    matrix_state,
    refusal,
    render,
    session,
    state,
    text,
)

LATE = T0 + 120


def cases() -> dict[str, dict[str, Any]]:
    return {
        "pending": state([], [delivery("do", T0 + 1)]),
        "validates": state([refusal(1, T0 + 3)], [delivery("do", T0 + 1), delivery("dont", T0 + 2)]),
        "stayed-away": state([], [delivery("do", T0 + 1), delivery("dont", T0 + 2)], now=LATE),
        "does-not-validate": state([], [delivery(p, T0 + 1) for p in ("do", "dont", "wrong")]),
        "no-tls": state([], [delivery("do", T0 + 1, tls=None)]),
        "incomplete": state([], [delivery("do", T0 + 1)], now=LATE),
    }


def test_a_refusal_where_no_starttls_is_offered_is_a_refusal_on_the_page_too() -> None:
    # The timeline tested `outcome in REFUSALS` and forgot the probes without STARTTLS.
    r = matrix_state([session("notls", T0 + 3, Outcome.LEFT, tls=None, starttls=False)], [delivery("do", T0 + 1)])
    assert r["probes"]["notls"]["status"] == "refused" and r["probes"]["notls"]["sessions"][0]["refusal"]
    ended = [
        e for e in timeline.timeline(r).events if e.host == f"abc.notls.{DOMAIN}" and e.text.startswith("The server")
    ]
    assert [e.tone for e in ended] == ["ok"]
    assert conformance.seen(r["probes"]["notls"]).text == "left when no TLS was offered"


def test_the_plaintext_consequence_is_worded_once() -> None:
    r = cases()["no-tls"]
    do = r["probes"]["do"]
    assert do["proves"] == wording.PLAINTEXT_CONSEQUENCE == view.probe_state(do).proves
    assert wording.PLAINTEXT_CONSEQUENCE in r["verdict"]["details"]
    assert r["verdict"]["summary"].count("plaintext") == 1


def test_summaries_lead_with_one_sentence_and_put_details_after() -> None:
    for name, r in cases().items():
        v = r["verdict"]
        lead = v["lead"]
        assert len(lead.split()) <= 35, (name, lead)
        assert re.findall(r"[.!?](?:\s|$)", lead) == ["."], (name, lead)  # one sentence
        assert v["summary"] == " ".join([lead, *v["details"]])
        html = render(r)
        words = unescape(text(html))
        assert html.count('<p class="summary">') == 1 and lead in words
        assert html.count('<p class="detail">') == len(v["details"])
        assert all(detail in words for detail in v["details"])


def test_lists_are_joined_with_and() -> None:
    lead = cases()["validates"]["verdict"]["lead"]
    assert f"abc.do.{DOMAIN} over TLSv1.3 and abc.dont.{DOMAIN} over TLSv1.3" in lead
    assert wording.join(["a", "b", "c"]) == "a, b and c" and wording.join(["a"]) == "a"


def test_no_capital_after_a_colon_in_our_words() -> None:
    no_sni = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", None)
    matrix = matrix_state([], [delivery("do", T0 + 1), delivery("dont", T0 + 1),
                               Delivery("abc", "ta-badname", T0 + 2, CLIENT, "mx", "a@s",
                                        f"t@abc.ta-badname.{DOMAIN}", no_sni)], now=LATE)  # fmt: skip
    badname = conformance.grade_row("ta-badname", matrix["probes"]["ta-badname"])
    assert badname.reason == "Cannot tell:" and badname.consequence is not None
    assert badname.consequence.startswith("your server did not name")
    # our own words: the verdict's, each probe's, the table's and the timeline's
    said: list[str] = []
    for r in [*cases().values(), matrix]:
        said += [r["verdict"]["summary"], r["conformance"]]
        for p in r["probes"].values():
            said += [p["grade"]["reason"], p["proves"] or "", p["expected"]]
        said += [f"{row.reason} {row.consequence}" for row in conformance.grade_rows(r)]
        said += [e.text for e in timeline.timeline(r).events]
    for words in said:
        assert re.findall(r": (?!RFC|TLS|SNI|HELO|MAIL|DANE|STARTTLS)[A-Z][a-z]+", words) == [], words


def test_parentheses_are_called_parentheses() -> None:
    for r in cases().values():
        assert "brackets" not in text(render(r))
    assert "in parentheses" in text(render(cases()["pending"]))


def test_while_pending_the_page_says_when_the_verdict_comes() -> None:
    r = cases()["pending"]
    assert r["verdict"]["grace_ends"] is not None
    html = render(r)
    due = re.search(r'<p class="due" id="verdict-due">(.*?)</p>', html, re.S)
    assert due is not None
    assert f'datetime="{r["verdict"]["grace_ends"]}"' in due.group(1)
    assert f'data-until="{r["verdict"]["grace_ends"]}"' in due.group(1)  # app.js counts down to it
    assert page.clock(r["verdict"]["grace_ends"]) + " UTC" in text(due.group(1))
    assert "verdict-due" not in render(state([], []))  # nothing arrived: no grace period yet
    assert "verdict-due" not in render(cases()["validates"])


def test_conformance_counts_only_decided_probes() -> None:
    nothing = matrix_state([], [])
    assert nothing["conformance"].startswith(f"Nothing decided yet on the {len(probes.CATALOGUE)} probes")
    pending = len(probes.CATALOGUE)
    assert nothing["conformance_detail"]["counts"] == {"pass": 0, "fail": 0, "inconclusive": 0, "pending": pending}
    some = matrix_state([], [delivery("do", T0 + 1), delivery("ta-rogue", T0 + 2)])
    assert some["conformance"].startswith("Conforms on 1 of the 2 probes decided so far.")
    assert "Conforms on 0 of" not in nothing["conformance"]


def test_the_plan_keeps_its_column_headings_when_stacked() -> None:
    html = ENV.get_template("index.html").render()
    headings = re.findall(r'<th scope="col">([^<]+)</th>', html)
    rows = re.findall(r"<tr><td.*?</tr>", html)
    assert rows and headings
    for row in rows:
        assert re.findall(r'<td data-label="([^"]+)">', row) == headings


def test_host_names_break_only_after_dots() -> None:
    assert (
        str(page.breakable("abc@do.x.test"))
        == "<span>abc@</span><wbr><span>do.</span><wbr><span>x.</span><wbr><span>test</span>"
    )
    assert "&lt;b&gt;" in str(page.breakable("<b>.x")) and "<b>" not in str(page.breakable("<b>.x"))
    html = render(cases()["validates"])
    for code in re.findall(r'<code class="(?:host|addr)"[^>]*>(.*?)</code>', html):
        assert re.fullmatch(r"(<span>[^<]+</span>)(<wbr><span>[^<]+</span>)*", code), code


def test_a_flaw_that_exposes_mail_is_in_the_headline() -> None:
    r = matrix_state([refusal(1, T0 + 3)], [delivery("do", T0 + 1), delivery("dont", T0 + 2),
                                            delivery("ta-rogue", T0 + 3)])  # fmt: skip
    v = r["verdict"]
    assert (v["code"], v["tone"]) == ("validates-with-flaws", "warn")
    assert "flaw" in v["headline"] and f"ta-rogue.{DOMAIN}" in v["lead"]
    # a failure that only delays mail (ee refused nothing, but nothing arrived) stays below the headline
    late = matrix_state([refusal(1, T0 + 3)], [delivery("do", T0 + 1), delivery("dont", T0 + 2)], now=LATE)
    assert late["verdict"]["code"] == "validates" and late["probes"]["ee"]["grade"]["grade"] == "fail"
    assert not late["probes"]["ee"]["exposes"] and r["probes"]["ta-rogue"]["exposes"]
    assert r["probes"]["ta-rogue"]["reason_code"] == "delivered"

"""The conformance matrix on the result page: one table row per probe, graded live, in Debian's Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from havedane import probes
from helpers import set_up

from .browser_harness import DOMAIN, SERVER_ENV, Server, Watch, deliver, leave_without_tls, new_page, refuse
from .test_result_page import not_reloaded, start_test

pytestmark = pytest.mark.browser

NOTLS = "127.0.0.28"
UNUSABLE_NOTLS = "127.0.0.29"
TA_NOTLS = "127.0.0.27"
MATRIX_ENV = {
    **SERVER_ENV,
    "HAVEDANE_PROBES_MATRIX": "true",
    "HAVEDANE_PROBES_ADDRESSES": f"notls={NOTLS},unusable-notls={UNUSABLE_NOTLS},ta-notls={TA_NOTLS}",
    "HAVEDANE_VERDICT_GRACE": "120",  # nothing turns into "not delivered" while a test looks at the rows
}
PROBES = len(probes.CATALOGUE)  # the classic three and every probe of the matrix

# Every element of the result must be styled by the stylesheet alone (the CSP has no 'unsafe-inline').
INLINE = """() => [...document.querySelectorAll("[style], style, script:not([src])")].map(e => e.outerHTML)"""


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Server]:
    srv = Server(set_up(tmp_path_factory.mktemp("havedane-matrix") / "setup"), MATRIX_ENV).start()
    yield srv
    srv.stop()


def grade(page: Page, probe: str) -> str | None:
    return page.locator(f"#row-{probe}").get_attribute("data-grade")


def test_rows_are_graded_live_without_a_reload(page: Page, matrix_server: Server, artifacts: Path) -> None:
    srv = matrix_server
    addresses = start_test(page, srv)
    assert len(addresses) == PROBES
    table = page.get_by_role("table", name="RFC 7672 conformance")
    expect(table.locator("tr.row")).to_have_count(PROBES)
    expect(table.locator('tr.row[data-grade="pending"]')).to_have_count(PROBES)
    expect(table.get_by_role("columnheader")).to_have_text(
        ["Probe", "What it tests", "Expected", "Seen", "Grade", "The basic test (each has a card above)",
         "Corner cases"]
    )  # fmt: skip
    headline = page.locator("#conformance-headline")
    expect(headline).to_contain_text(f"Nothing decided yet on the {PROBES} probes")  # not "0 of 14"
    expect(headline).to_contain_text(f"{PROBES} still waiting")
    rogue = page.locator("#row-ta-rogue")
    expect(rogue.locator(".expected")).to_have_text("refuse")
    expect(rogue.locator(".seen")).to_have_text("nothing yet")
    expect(page.locator("#matrix-advice")).to_have_count(0)  # nothing failed yet
    expect(page.locator("#row-bogus .expected")).to_have_text("never connect")
    expect(page.locator("#row-ee .expected")).to_have_text("deliver over TLS")
    # Issue 15's rows: what each tests, and what a DANE sender must do there.
    for probe, want in (("ta-notls", "refuse"), ("mixed-ee", "deliver over TLS"), ("mixed-ta", "deliver over TLS"),
                        ("ta-full", "deliver over TLS")):  # fmt: skip
        expect(page.locator(f"#row-{probe} .expected")).to_have_text(want)
    expect(page.locator("#row-ta-full .tests")).to_contain_text("2 1 0")
    expect(page.locator("#row-ta-full .tests")).to_contain_text("without the CA")
    expect(page.locator("#row-mixed-ee .tests")).to_contain_text("matches nothing")

    # A sender that accepts the rogue chain (it sent SNI, so it was shown that chain): fail.
    deliver(srv.smtp_port, addresses["ta-rogue"])
    expect(rogue).to_have_attribute("data-grade", "fail")
    expect(rogue.locator(".grade")).to_have_text("Fail")
    expect(rogue.locator(".grade svg.icon-bad")).to_have_count(1)  # an icon, and the word: readable without colour
    expect(rogue.locator(".seen")).to_contain_text("delivered over TLSv1.")
    why = page.locator("#why-ta-rogue")
    expect(why).to_contain_text("Delivered.")
    expect(why).to_contain_text("accepts a certificate chain that does not lead to your trust anchor")
    expect(why).to_contain_text("an attacker on the path can read your mail")
    assert rogue.locator(".grade").get_attribute("aria-describedby") == "why-ta-rogue"
    expect(page.locator("#announce")).to_contain_text(f"ta-rogue.{DOMAIN}: Fail.")
    expect(page.locator("#matrix-advice")).to_contain_text("report it to the mail server's developers")

    # A sender that refuses a mixed set whose DANE-EE record does not match, though its
    # DANE-TA record does: fail, with what that costs, and the advice stays.
    refuse(srv.smtp_port, addresses["mixed-ta"].rpartition("@")[2])
    mixed = page.locator("#row-mixed-ta")
    expect(mixed).to_have_attribute("data-grade", "fail")
    expect(page.locator("#why-mixed-ta")).to_contain_text("gives up when a DANE-EE record does not match")
    expect(page.locator("#why-mixed-ta")).to_contain_text("RFC 7672 §3.1")
    expect(page.locator("#announce")).to_contain_text(f"mixed-ta.{DOMAIN}: Fail.")

    # No STARTTLS offered on notls's own address: EHLO, then QUIT is what a DANE sender does.
    leave_without_tls(NOTLS, srv.smtp_port)
    notls = page.locator("#row-notls")
    expect(notls).to_have_attribute("data-grade", "pass")
    expect(notls.locator(".grade")).to_have_text("Pass")
    expect(notls.locator(".seen")).to_contain_text("left when no TLS was offered")
    expect(page.locator("#why-notls")).to_have_count(0)  # a pass needs no explanation row

    # Without SNI the sender saw our default certificate, not ta-badname's: inconclusive, not a wrong grade.
    deliver(srv.smtp_port, addresses["ta-badname"], send_sni=False)
    badname = page.locator("#row-ta-badname")
    expect(badname).to_have_attribute("data-grade", "inconclusive")
    expect(badname.locator(".grade")).to_have_text("Inconclusive")
    expect(badname.locator(".seen")).to_contain_text("no SNI")
    badname_host = addresses["ta-badname"].rpartition("@")[2]
    expect(page.locator("#why-ta-badname")).to_contain_text(f"did not name {badname_host} in SNI")

    # The classic three: their cards and their rows move together, and the verdict at the top.
    deliver(srv.smtp_port, addresses["do"])
    deliver(srv.smtp_port, addresses["dont"])
    refuse(srv.smtp_port, addresses["wrong"].rpartition("@")[2])  # SNI: the test's host there
    # ta-rogue delivered: an attacker can read that mail, so the headline says so, not in green (issue 13)
    expect(page.locator("#verdict")).to_have_attribute("data-code", "validates-with-flaws")
    expect(page.locator("#verdict")).to_have_class(re.compile(r"\btone-warn\b"))
    expect(page.locator("#verdict-title")).to_have_text("Your server validates DANE, but a flaw exposes mail")
    expect(page.locator("#verdict .summary")).to_contain_text(f"ta-rogue.{DOMAIN}")
    expect(page.locator("#probe-wrong")).to_have_attribute("data-status", "refused")
    expect(page.locator("#row-wrong")).to_have_attribute("data-grade", "pass")
    expect(page.locator("#row-wrong .seen")).to_contain_text("refused after TLS")
    expect(headline).to_contain_text("Conforms on 4 of the 7 probes decided so far")
    expect(headline).to_contain_text(f"2 fail, 1 inconclusive, {PROBES - 7} still waiting")
    expect(page.locator("#conformance-jump")).to_contain_text("Conforms on 4 of the 7 probes decided so far")
    assert page.locator("article.probe").count() == 3  # the matrix is rows, not cards
    assert grade(page, "ee") == "pending" and grade(page, "bogus") == "pending"
    assert page.evaluate(INLINE) == []
    not_reloaded(page)

    page.screenshot(path=str(artifacts / "matrix-desktop.png"), full_page=True)
    page.locator("#conformance").screenshot(path=str(artifacts / "matrix-table-desktop.png"))

    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling on a phone
    # Stacked: each row is a block whose grade sits beside the host, still labelled for the eye.
    rogue_box, host_box = rogue.locator(".grade").bounding_box(), rogue.locator("th").bounding_box()
    assert rogue_box is not None and host_box is not None
    assert abs(rogue_box["y"] - host_box["y"]) < 12 and rogue_box["x"] > host_box["x"]
    assert page.evaluate("getComputedStyle(document.querySelector('#row-ta-rogue .seen'), '::before').content") == (
        '"Seen: "'
    )
    for row in page.locator("tr.row").all():
        box = row.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    page.locator("#row-ta-badname").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "matrix-phone.png"), full_page=False)


def test_the_table_is_complete_without_javascript(
    matrix_server: Server, browser: Browser, watch: Watch, artifacts: Path
) -> None:
    srv = matrix_server
    test = srv.new_test()
    a = test["addresses"]
    deliver(srv.smtp_port, a["ta-rogue"])
    deliver(srv.smtp_port, a["unusable-notls"], tls=False)  # a plain sender on a listener without STARTTLS
    deliver(srv.smtp_port, a["ta-notls"], tls=False)
    deliver(srv.smtp_port, a["ta"])
    leave_without_tls(NOTLS, srv.smtp_port)
    context, page = new_page(browser, watch, java_script_enabled=False, viewport={"width": 1000, "height": 900})
    try:
        page.goto(test["url"])
        expect(page.locator("#live-status")).to_contain_text("Without JavaScript")
        expect(page.locator("tr.row")).to_have_count(PROBES)
        expected = {"ta-rogue": "fail", "unusable-notls": "fail", "ta-notls": "fail", "ta": "pass", "notls": "pass",
                    "ee": "pending"}  # fmt: skip
        for probe, want in expected.items():
            expect(page.locator(f"#row-{probe}")).to_have_attribute("data-grade", want)
        expect(page.locator("#row-ta .seen")).to_contain_text("delivered over TLSv1.")
        expect(page.locator("#row-unusable-notls .seen")).to_contain_text("delivered without TLS")
        expect(page.locator("#why-unusable-notls")).to_contain_text("Delivered without TLS, where TLS is mandatory.")
        expect(page.locator("#why-unusable-notls")).to_contain_text("anyone on the path can read that mail")
        expect(page.locator("#why-ta-notls")).to_contain_text("Delivered without TLS, where TLS is mandatory.")
        expect(page.locator("#why-ta-notls")).to_contain_text("RFC 7672 §2.2")
        expect(page.locator("#why-ta-rogue")).to_contain_text("does not lead to your trust anchor")
        expect(page.locator("#conformance-headline")).to_contain_text("Conforms on 2 of the 5 probes decided so far")
        expect(page.locator("#conformance-headline")).to_contain_text(f"3 fail, {PROBES - 5} still waiting")
        expect(page.locator("#row-ta .seen time")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d UTC$"))  # served as is
        assert page.evaluate(INLINE) == []
        assert page.evaluate("document.documentElement.scrollWidth") <= 1000
        page.locator("#conformance").screenshot(path=str(artifacts / "matrix-table-nojs.png"))
    finally:
        context.close()

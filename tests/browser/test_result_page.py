"""The result page in Debian's Chromium, against a real `havedane serve` and real SMTP."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from helpers import set_up

from .browser_harness import DOMAIN, SERVER_ENV, Server, Watch, deliver, new_page, refuse

pytestmark = pytest.mark.browser

MARKER = "window.__havedane_marker"


def start_test(page: Page, server: Server) -> dict[str, str]:
    """Open `/`, click start, and read the addresses from the page (probe name -> address)."""
    page.goto(server.web + "/")
    page.get_by_role("button", name="Start a test").click()
    page.wait_for_url(re.compile(r"/t/[a-z0-9]+$"))
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    page.evaluate(f"{MARKER} = 'still the same page'")
    addresses = {}
    for code in page.locator("code.addr").all():
        name = (code.get_attribute("id") or "").removeprefix("addr-")
        addresses[name] = (code.text_content() or "").strip()
    return addresses


def not_reloaded(page: Page) -> None:
    assert page.evaluate(MARKER) == "still the same page"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def status(page: Page, probe: str) -> str | None:
    return page.locator(f"#probe-{probe}").get_attribute("data-status")


def test_live_updates_without_reload_validating_sender(page: Page, server: Server, artifacts: Path) -> None:
    addresses = start_test(page, server)
    assert set(addresses) == {"do", "dont", "wrong"}
    # test@<alias>.<probe>.<domain>: the test's own host at each probe.
    assert all(a.startswith("test@") and a.endswith(f".{name}.{DOMAIN}") for name, a in addresses.items())
    verdict = page.locator("#verdict")
    expect(verdict).to_have_attribute("data-code", "pending")
    expect(page.locator("#verdict-title")).to_have_text("Waiting for your mail")

    deliver(server.smtp_port, addresses["do"])
    expect(page.locator("#probe-do")).to_have_attribute("data-status", "delivered")
    do_card = page.locator("#probe-do")
    expect(do_card.locator(".badge")).to_contain_text("Delivered")
    expect(do_card.locator("dl.facts")).to_contain_text("mail.sender.test")
    expect(do_card.locator("dl.facts")).to_contain_text("TLSv1.")
    expect(do_card.locator("dl.facts")).to_contain_text(f"do.{DOMAIN}")  # the SNI
    expect(do_card.locator("dl.facts")).to_contain_text("127.0.0.1")
    expect(verdict).to_have_attribute("data-code", "pending")
    expect(page.locator("#verdict-title")).to_have_text("Mail is arriving")
    assert status(page, "dont") == "pending" and status(page, "wrong") == "pending"

    page.locator("#copy-all").focus()  # a keyboard user on a control: an update must not lose their place
    deliver(server.smtp_port, addresses["dont"])
    expect(page.locator("#probe-dont")).to_have_attribute("data-status", "delivered")
    expect(verdict).to_have_attribute("data-code", "pending")
    assert page.evaluate("document.activeElement.id") == "copy-all"

    refuse(server.smtp_port, addresses["wrong"].rpartition("@")[2])  # SNI: the test's host there
    expect(page.locator("#probe-wrong")).to_have_attribute("data-status", "refused")
    expect(verdict).to_have_attribute("data-code", "validates")
    expect(page.locator("#verdict-title")).to_have_text("Your server validates DANE")
    evidence = page.locator("#probe-wrong .evidence")
    wrong_host = addresses["wrong"].rpartition("@")[2]
    expect(evidence).to_contain_text(f"Your server at 127.0.0.1 connected to {wrong_host}")
    expect(evidence).to_contain_text("saw our certificate, and refused to send")
    # Tied by the test's own host it asked for in SNI, not by the client address.
    expect(page.locator("#probe-wrong .note")).to_contain_text("asked for in TLS (SNI)")
    expect(page.locator("#probe-wrong .proves")).to_contain_text("refused to send")
    expect(page.locator("#after-h")).to_have_text("What happens now")
    expect(page.locator("section.afterwards")).to_contain_text("delay notice")
    expect(page.locator("#next-h")).to_have_count(0)
    events = page.locator("ol.events li.event")
    expect(events).to_have_count(7)  # created; per probe: connection + accepted / left
    expect(page.locator("#announce")).to_contain_text("Your server validates DANE")
    assert page.title().startswith("Your server validates DANE")
    not_reloaded(page)

    page.screenshot(path=str(artifacts / "result-validates.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling on a phone
    page.screenshot(path=str(artifacts / "result-validates-phone.png"), full_page=False)


def test_non_validating_sender_gets_next_steps(page: Page, server: Server, artifacts: Path) -> None:
    addresses = start_test(page, server)
    for name in ("do", "dont"):
        deliver(server.smtp_port, addresses[name])
        expect(page.locator(f"#probe-{name}")).to_have_attribute("data-status", "delivered")
    deliver(server.smtp_port, addresses["wrong"])
    expect(page.locator("#verdict")).to_have_attribute("data-code", "does-not-validate")
    expect(page.locator("#verdict-title")).to_have_text("Your server does not validate DANE")
    wrong = page.locator("#probe-wrong")
    expect(wrong).to_have_attribute("data-status", "delivered")
    expect(wrong.locator(".badge")).to_contain_text("would not have sent this")
    expect(wrong.locator(".proves")).to_contain_text("does not validate DANE")

    steps = page.locator("section.next")
    expect(steps.locator("#next-h")).to_have_text("What to do next")
    expect(steps.locator("#conf-postfix")).to_have_text(
        "smtp_dns_support_level = dnssec\nsmtp_tls_security_level = dane"
    )
    expect(steps.locator("#conf-exim")).to_contain_text("dnssec_request_domains = *")
    expect(steps.locator("#conf-exim")).to_contain_text("hosts_try_dane = *")
    expect(steps.locator("#conf-postfix")).to_be_hidden()  # one <details> per mail server, closed
    steps.get_by_text("Postfix", exact=True).click()
    expect(steps.locator("#conf-postfix")).to_be_visible()
    expect(steps).to_contain_text("Exchange Online")
    expect(steps.locator('a[href="https://learn.microsoft.com/en-us/purview/how-smtp-dane-works"]')).to_have_count(1)
    host = {name: a.rpartition("@")[2] for name, a in addresses.items()}
    expect(steps).to_contain_text(f"will then not deliver to {host['wrong']}")
    expect(steps).to_contain_text("delay notice")
    expect(steps).to_contain_text(f"dig +dnssec TLSA _25._tcp.{host['do']}")
    not_reloaded(page)
    page.screenshot(path=str(artifacts / "result-does-not-validate.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.locator("#next-h").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "result-does-not-validate-phone.png"), full_page=False)


def test_plaintext_sender_is_told_it_does_not_encrypt(page: Page, server: Server) -> None:
    addresses = start_test(page, server)
    deliver(server.smtp_port, addresses["do"], tls=False)
    expect(page.locator("#verdict")).to_have_attribute("data-code", "no-tls")
    expect(page.locator("#verdict-title")).to_have_text("Your server sent mail without TLS")
    do_card = page.locator("#probe-do")
    expect(do_card.locator(".badge")).to_contain_text("Delivered without TLS")
    expect(do_card.locator("dl.facts")).to_contain_text("none (plaintext)")
    expect(do_card.locator(".proves")).to_contain_text("plaintext")
    expect(page.locator("section.next")).to_contain_text("smtp_tls_security_level")
    not_reloaded(page)


def test_verdict_moves_with_time_when_a_probe_never_arrives(page: Page, server: Server) -> None:
    addresses = start_test(page, server)
    deliver(server.smtp_port, addresses["do"])
    expect(page.locator("#verdict")).to_have_attribute("data-code", "pending")
    # HAVEDANE_VERDICT_GRACE=3: the stream wakes when the grace period ends, with no new mail.
    expect(page.locator("#verdict")).to_have_attribute("data-code", "incomplete", timeout=8000)
    expect(page.locator("#probe-dont")).to_have_attribute("data-status", "not-delivered")
    expect(page.locator("section.next")).to_contain_text("postqueue -p")
    not_reloaded(page)


HELO = "<img src=x onerror=window.pwned=1;alert(1)>"
MAIL_FROM = '"<script>window.pwned=2;alert(2)</script>"@sender.test'
SNI = "<svg/onload=window.pwned=3;alert(3)>"

INJECTED = """() => {
  const tags = [...document.querySelectorAll("img, script:not([src]), iframe, object, embed")].map(e => e.outerHTML);
  const handlers = [...document.querySelectorAll("*")].flatMap(
    e => [...e.attributes].filter(a => a.name.startsWith("on")).map(a => e.tagName + " " + a.name));
  return tags.concat(handlers);
}"""


def test_hostile_helo_mail_from_and_sni_are_shown_as_text(
    page: Page, server: Server, browser: Browser, watch: Watch
) -> None:
    addresses = start_test(page, server)
    deliver(server.smtp_port, addresses["do"], helo=HELO, mail_from=MAIL_FROM, sni=SNI)
    expect(page.locator("#probe-do")).to_have_attribute("data-status", "delivered")

    def check(p: Page) -> None:
        facts = p.locator("#probe-do dl.facts")
        expect(facts.locator("dd").nth(1)).to_have_text(HELO)  # HELO, exactly, as text
        expect(facts).to_contain_text(SNI)
        expect(facts).to_contain_text(MAIL_FROM)
        expect(p.locator("#verdict .summary")).to_contain_text(HELO)
        expect(p.locator("ol.events")).to_contain_text(SNI)
        assert p.evaluate(INJECTED) == []
        assert p.evaluate("typeof window.pwned") == "undefined"

    check(page)  # inserted live, from the fragment
    page.reload()  # and rendered as a whole page
    check(page)
    context, fresh = new_page(browser, watch, java_script_enabled=False)  # and with JavaScript off
    fresh.goto(page.url)
    check(fresh)
    context.close()
    assert watch.dialogs == []


def test_without_javascript_the_page_shows_the_current_state(server: Server, browser: Browser, watch: Watch) -> None:
    test = server.new_test()
    context, page = new_page(browser, watch, java_script_enabled=False)
    page.goto(test["url"])
    expect(page.locator("#verdict")).to_have_attribute("data-code", "pending")
    assert page.locator('noscript meta[http-equiv="refresh"]').count() == 1  # reloads itself while waiting
    expect(page.locator("#live-status")).to_contain_text("Without JavaScript")
    expect(page.locator("button.copy").first).to_be_hidden()  # copying needs JavaScript: not offered
    expect(page.locator("#mailto")).to_be_visible()

    addresses = test["addresses"]
    # The refusal first: it is tied to the test from shortly before its first delivery to
    # the end of the grace period (3 s here), a bound a slow machine could pass after it.
    refuse(server.smtp_port, addresses["wrong"].rpartition("@")[2])  # SNI: the test's host there
    deliver(server.smtp_port, addresses["do"])
    deliver(server.smtp_port, addresses["dont"])
    server.wait_for_sessions(test["alias"], 3)  # without JavaScript the page shows what it read
    page.reload()
    expect(page.locator("#verdict")).to_have_attribute("data-code", "validates")
    expect(page.locator("#verdict-title")).to_have_text("Your server validates DANE")
    for name, state in (("do", "delivered"), ("dont", "delivered"), ("wrong", "refused")):
        expect(page.locator(f"#probe-{name}")).to_have_attribute("data-status", state)
    expect(page.locator("#probe-wrong .evidence")).to_contain_text("refused to send")
    expect(page.locator("ol.events li.event")).to_have_count(7)
    expect(page.locator("time").first).to_contain_text("UTC")  # server-rendered times say their zone
    assert page.locator('noscript meta[http-equiv="refresh"]').count() == 0  # final: no more reloading
    context.close()


def test_reconnects_after_the_server_restarts(tmp_path: Path, browser: Browser, watch: Watch) -> None:
    srv = Server(set_up(tmp_path / "setup"), SERVER_ENV).start()
    context, page = new_page(browser, watch)
    try:
        addresses = start_test(page, srv)
        srv.stop()
        expect(page.locator("#live-status")).to_have_attribute("data-state", "reconnecting")
        srv.start()  # same ports, same database
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live", timeout=10000)
        deliver(srv.smtp_port, addresses["do"])
        expect(page.locator("#probe-do")).to_have_attribute("data-status", "delivered")
        not_reloaded(page)
    finally:
        context.close()
        srv.stop()


def test_falls_back_to_polling_when_the_stream_is_blocked(page: Page, server: Server, watch: Watch) -> None:
    # A proxy that refuses text/event-stream: the page must still update, by polling.
    page.route("**/events", lambda route: route.fulfill(status=502, body="bad gateway"))
    test = server.new_test()
    page.goto(test["url"])
    page.evaluate(f"{MARKER} = 'still the same page'")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "polling")
    deliver(server.smtp_port, test["addresses"]["do"])
    expect(page.locator("#probe-do")).to_have_attribute("data-status", "delivered", timeout=8000)
    not_reloaded(page)
    blocked = [m for m in watch.console if "502" in m]
    assert blocked  # the browser did report the refused stream
    watch.console[:] = [m for m in watch.console if m not in blocked]


def test_self_contained_labelled_and_copyable(page: Page, server: Server, watch: Watch) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.web)
    addresses = start_test(page, server)
    response = page.request.get(page.url)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp

    page.get_by_role("button", name="Copy all addresses").click()
    assert page.evaluate("navigator.clipboard.readText()") == ", ".join(addresses.values())
    expect(page.locator("#copy-all")).to_have_text("Copied")
    mailto = page.locator("#mailto").get_attribute("href") or ""
    assert mailto.startswith("mailto:" + ",".join(addresses.values()) + "?subject=")
    permalink = page.locator("#permalink")
    assert permalink.get_attribute("href") == page.url

    unnamed = page.evaluate(
        """() => [...document.querySelectorAll("button, a, input, select, textarea")]
             .filter(e => !(e.getAttribute("aria-label") || e.textContent).trim()).map(e => e.outerHTML)"""
    )
    assert unnamed == []
    page.goto(server.web + "/")
    expect(page.get_by_role("button", name="Start a test")).to_be_visible()
    outside = [u for u in watch.requests if not u.startswith(server.web + "/")]
    assert outside == [], outside  # no fonts, scripts, styles or images from anywhere else

"""Host names, addresses and the plan table at desktop and phone widths, in Debian's Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from .browser_harness import Server, Watch, deliver, new_page
from .test_result_page import start_test

pytestmark = pytest.mark.browser

# For every host name and address on the page: the characters just before each line break.
BREAKS = """() => {
  const found = [];
  document.querySelectorAll("code.host, code.addr").forEach((code) => {
    const chars = [];
    const walker = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (let i = 0; i < node.length; i++) {
        const range = document.createRange();
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        const rect = range.getClientRects()[0];
        if (rect) chars.push([node.data[i], rect.top]);
      }
    }
    for (let i = 1; i < chars.length; i++) {
      if (chars[i][1] > chars[i - 1][1] + 2) found.push(code.textContent + " after " + chars[i - 1][0]);
    }
  });
  return found;
}"""


@pytest.mark.parametrize("width", [1280, 375], ids=["desktop", "phone"])
def test_host_names_break_only_after_a_dot_or_the_at(
    browser: Browser, server: Server, watch: Watch, artifacts: Path, width: int
) -> None:
    context, page = new_page(browser, watch, viewport={"width": width, "height": 900})
    try:
        addresses = start_test(page, server)
        for name in ("do", "dont"):
            deliver(server.smtp_port, addresses[name])
        expect(page.locator("#probe-dont")).to_have_attribute("data-status", "delivered")
        expect(page.locator("#verdict-due .countdown")).to_have_text(re.compile(r"^ \(in \d+ (s|min)"))
        breaks = page.evaluate(BREAKS)
        assert all(re.search(r" after [.@]$", b) for b in breaks), breaks
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(artifacts / f"words-result-{width}.png"), full_page=True)
    finally:
        context.close()


def test_the_plan_keeps_its_headings_on_a_phone(browser: Browser, server: Server, watch: Watch,
                                                artifacts: Path) -> None:  # fmt: skip
    context, page = new_page(browser, watch, viewport={"width": 375, "height": 800})
    try:
        page.goto(server.web + "/")
        cells = page.locator("table.plan td")
        assert cells.count() > 0
        labels = cells.evaluate_all("cells => cells.map(c => getComputedStyle(c, '::before').content)")
        headings = page.locator("table.plan th").all_text_contents()
        assert set(labels) == {f'"{h}: "' for h in headings}, labels
        page.screenshot(path=str(artifacts / "words-plan-375.png"), full_page=True)
    finally:
        context.close()

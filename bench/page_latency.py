"""Latency from the receiver's `250` to the update on an open result page.

Starts a real `havedane serve` (SQLite, loopback) and Debian's Chromium, opens
result pages and, for each sample, delivers one message over STARTTLS with
smtplib. The clock starts when the client has read the `250` to DATA (the
delivery is committed before that reply). In the page, a MutationObserver notes
when the probe's card shows the delivery (the DOM change) and the next animation
frame after it (the update painted); a second EventSource in the page notes when
the SSE event arrived, to split the time into "to the event" and "event to DOM".
Browser and script run on the same machine, so both read the same wall clock.

    .venv/bin/python bench/page_latency.py [--samples 60] [--pages 1]

--pages opens that many result pages of other tests at the same time, each with
its own live stream, as background load on the web process.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "browser"))

from browser_harness import CHROMIUM_ARGS, Server, chromium_path, deliver  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

# Notes, per probe card, when its data-status first leaves "pending"; and when SSE events arrive.
OBSERVER = """() => {
  const now = () => performance.timeOrigin + performance.now();
  window.__seen = {}; window.__painted = {}; window.__events = [];
  const check = () => {
    document.querySelectorAll("article.probe").forEach(card => {
      if (card.dataset.status !== "pending" && !(card.id in window.__seen)) {
        window.__seen[card.id] = now();
        requestAnimationFrame(() => { window.__painted[card.id] = now(); });
      }
    });
  };
  new MutationObserver(check).observe(document.getElementById("result"), {childList: true, subtree: true});
  const alias = document.getElementById("result").dataset.alias;
  const es = new EventSource("/api/tests/" + alias + "/events");
  es.addEventListener("update", () => window.__events.push(now()));
  check();
}"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}, load average {os.getloadavg()}"


def open_test(page: Page, server: Server) -> dict[str, Any]:
    test = server.new_test()
    page.goto(test["url"])
    page.wait_for_selector('#live-status[data-state="live"]')
    return test


def sample(page: Page, server: Server, test: dict[str, Any], probe: str) -> tuple[float, float, float]:
    """(250 -> SSE event, 250 -> DOM, 250 -> painted), in milliseconds."""
    events_before = page.evaluate("window.__events.length")
    acknowledged = deliver(server.smtp_port, test["addresses"][probe]) * 1000
    card = f"probe-{probe}"
    page.wait_for_function("(card) => window.__painted[card] !== undefined", arg=card, timeout=10_000)
    seen, painted, events = page.evaluate(
        "(card) => [window.__seen[card], window.__painted[card], window.__events]", card
    )
    event = next((t for t in events[events_before:] if t >= acknowledged - 50), events[-1])
    return event - acknowledged, seen - acknowledged, painted - acknowledged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60, help="deliveries to time (default 60)")
    parser.add_argument("--pages", type=int, default=0, help="other live result pages open meanwhile (default 0)")
    args = parser.parse_args()
    if chromium_path() is None:
        print("page_latency: no Chromium (scripts/system-packages installs it)", file=sys.stderr)
        return 1

    env = {"HAVEDANE_VERDICT_GRACE": "3600", "HAVEDANE_LIMITS_TESTS_PER_MINUTE": "100000"}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        server = Server(Path(tmp) / "setup", env).init().start()
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            background = [browser.new_page() for _ in range(args.pages)]
            for other in background:
                open_test(other, server)
            page = browser.new_page()
            to_event: list[float] = []
            to_dom: list[float] = []
            to_paint: list[float] = []
            probes = ["do", "dont", "wrong"]
            while len(to_dom) < args.samples:
                test = open_test(page, server)
                page.evaluate(OBSERVER)
                for probe in probes[: args.samples - len(to_dom)]:
                    time.sleep(0.2)  # let the previous update settle: one change at a time
                    e, d, p = sample(page, server, test, probe)
                    to_event.append(e)
                    to_dom.append(d)
                    to_paint.append(p)
        finally:
            browser.close()
            server.stop()

    print(f"machine: {machine()}")
    print(f"samples: {len(to_dom)}, other live pages: {args.pages}")
    for name, values in (("250 -> SSE event", to_event), ("250 -> DOM updated", to_dom), ("250 -> painted", to_paint)):
        print(
            f"{name:20} median {statistics.median(values):6.1f} ms   p95 {percentile(values, 95):6.1f} ms   "
            f"max {max(values):6.1f} ms"
        )
    p95 = percentile(to_paint, 95)
    print(f"target p95 < 250 ms (250 -> painted): {'met' if p95 < 250 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

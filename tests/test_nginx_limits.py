"""Requests per client address, capped by the sample nginx in front of havedane (issue 12's
"Bounded cost": havedane itself does not rate-limit HTTP requests).

A real nginx runs deploy/nginx-havedane.conf (rendered for loopback by nginxfront) in front of
`havedane serve` in this process, over real TLS; clients bind their own 127.0.0.x source
addresses, which nginx counts as different visitors. What is shown: a burst from one address
beyond the limit gets nginx's own 429 (JSON under /api/, text elsewhere) while another address
is served; what the page and `havedane probe` send is never limited; an open live stream
(SSE) goes on delivering events through a burst from its own address.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import send
from inprocess import InProcess
from nginxfront import SAMPLE, Nginx

SITE = SAMPLE.read_text()
RATE = int(re.findall(r"limit_req_zone \$binary_remote_addr zone=havedane_req:\S+ rate=(\d+)r/s;", SITE)[0])
BURST = int(re.findall(r"limit_req zone=havedane_req burst=(\d+) nodelay;", SITE)[0])
TOO_MANY_JSON = {"error": "too many requests from your address; try again in a few seconds"}


@pytest.fixture
def front(setup_dir: Path, tmp_path: Path) -> Iterator[tuple[Nginx, InProcess]]:
    """havedane as README's Deploying sets it up behind nginx (trusting 127.0.0.1's
    X-Forwarded-For), and nginx from the sample in front of it."""
    env = {"HAVEDANE_VERDICT_GRACE": "2", "HAVEDANE_WEB_TRUSTED_PROXIES": "127.0.0.1/32"}
    server = InProcess(setup_dir, env=env).start()
    nginx = Nginx(tmp_path / "nginx", server.web_port)
    nginx.directory.mkdir()
    try:
        checked = nginx.configure()
        assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr
        yield nginx.start(), server
    finally:
        nginx.stop()
        assert server.stop() == 0, "".join(server.output)


def next_event(lines: Iterator[str]) -> dict[str, str]:
    """The fields of the next SSE event with a name (`retry:` and comments are skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in fields:
                return fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    raise AssertionError(f"the stream ended before an event: {fields}")


def burst(client: httpx.Client, path: str, refusals: int = 20, most: int = 600) -> list[int]:
    """GET `path` back to back until nginx refused `refusals` of them (or `most` were sent)."""
    statuses: list[int] = []
    while statuses.count(429) < refusals and len(statuses) < most:
        statuses.append(client.get(path).status_code)
    return statuses


def test_nginx_accepts_the_sample_rendered_for_the_test(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path, upstream_port=8080)
    checked = nginx.configure()
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr
    # The limit is per client address, with its own answer, and covers every location.
    site = (tmp_path / "site.conf").read_text()
    assert "limit_req_zone $binary_remote_addr zone=havedane_req" in site and "limit_req_status 429;" in site
    assert RATE and BURST


def refused(client: httpx.Client, method: str, path: str, over: str, tries: int = 3) -> httpx.Response:
    """`method path` sent right after a refusal of `over`, while the address is over its
    limit; sent again (at most `tries` times) if a token came back in between."""
    for _ in range(tries):
        burst(client, over, refusals=1)
        answer = client.request(method, path)
        if answer.status_code == 429:
            break
    return answer


def test_a_burst_from_one_address_gets_429_while_another_address_is_served(
    front: tuple[Nginx, InProcess],
) -> None:
    nginx, _ = front
    with nginx.client("127.0.0.2") as flood, nginx.client("127.0.0.3") as other:
        alias = other.post("/api/tests").json()["alias"]
        path = f"/api/tests/{alias}"
        statuses: list[int] = []
        meanwhile: list[int] = []  # the other address, between the flood's requests
        start = time.monotonic()
        while statuses.count(429) < 40 and len(statuses) < 600:
            statuses.append(flood.get(path).status_code)
            if len(statuses) % 10 == 0:
                meanwhile.append(other.get(path).status_code)
        elapsed = time.monotonic() - start
        served = statuses.count(200)
        assert set(statuses) == {200, 429}
        # The burst is served at once (nodelay), then RATE a second: never more.
        assert statuses[: BURST + 1] == [200] * (BURST + 1)
        assert served <= BURST + 1 + RATE * elapsed + 1, (served, elapsed)
        # The other address is served all along, its own visitor, by havedane.
        assert meanwhile == [200] * len(meanwhile) and len(meanwhile) >= (BURST + 40) // 10
        shown = other.get(f"/t/{alias}")
        assert shown.status_code == 200 and alias in shown.text and "text/html" in shown.headers["content-type"]

        # nginx's own answers, which a client understands: JSON under /api/, text for a page.
        api, create = refused(flood, "GET", path, path), refused(flood, "POST", "/api/tests", path)
        page = refused(flood, "GET", f"/t/{alias}", path)
        for r in (api, create):
            assert (r.status_code, r.headers["content-type"], r.json()) == (429, "application/json", TOO_MANY_JSON)
        assert (page.status_code, page.headers["content-type"]) == (429, "text/plain")
        assert page.text == "Too many requests from your address; wait a few seconds and reload.\n"
        assert {r.headers["retry-after"] for r in (api, page, create)} == {"1"}

        # Retry-After is honest: a second later the flooding address is served again.
        time.sleep(1.2)
        assert flood.get(path).status_code == 200

    log = nginx.access_log()
    assert {s for a, s, _, _ in log if a == "127.0.0.3"} == {200, 201}
    assert 429 not in {s for a, s, _, _ in log if a != "127.0.0.2"}


def static_assets(html: str) -> list[str]:
    """What a browser fetches with a page: its style sheet, script and icon."""
    found = re.findall(r'(?:href|src)="(/static/[^"]+)"', html)
    assert found, html
    return found


def visit(nginx: Nginx, smtp_port: int) -> list[int]:
    """What one visitor's browser sends (static/app.js): the front page, the form, the
    result page, each with its assets; the live stream until it announces the delivery;
    the fragment the script then fetches; then polling as `havedane probe` does (every 2 s,
    more often than the page itself: every 30 s with the stream, 3 s without)."""
    statuses: list[int] = []
    with nginx.client() as browser:
        home = browser.get("/")
        statuses += [home.status_code, *(browser.get(a).status_code for a in static_assets(home.text))]
        created = browser.post("/new")
        statuses.append(created.status_code)
        page = browser.get(created.headers["location"])
        statuses += [page.status_code, *(browser.get(a).status_code for a in static_assets(page.text))]
        alias = created.headers["location"].rsplit("/", 1)[1]
        with browser.stream("GET", f"/api/tests/{alias}/events") as events:
            statuses.append(events.status_code)
            lines = events.iter_lines()
            first = next_event(lines)
            addresses = json.loads(first["data"])["addresses"]
            assert send(smtp_port, list(addresses.values())) == {}
            update = next_event(lines)
            assert update["id"] != first["id"]
            assert json.loads(update["data"])["probes"]["do"]["status"] == "delivered"
        statuses.append(browser.get(f"/t/{alias}?fragment=1").status_code)
        for _ in range(3):
            time.sleep(2)
            statuses.append(browser.get(f"/api/tests/{alias}").status_code)
    return statuses


def test_ordinary_use_from_one_address_is_never_limited(front: tuple[Nginx, InProcess]) -> None:
    """Two visitors behind one address (an office's NAT) and `havedane probe` run at once."""
    nginx, server = front
    assert nginx.ca is not None
    probe = subprocess.Popen(
        [sys.executable, "-m", "havedane", "probe", "--server", f"https://127.0.0.1:{nginx.https_port}",
         "--smtp", f"127.0.0.1:{server.smtp_port}", "--from", "postmaster@sender.example", "--json",
         "--timeout", "60"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "SSL_CERT_FILE": str(nginx.ca)},
    )  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        visitors = [pool.submit(visit, nginx, server.smtp_port) for _ in range(2)]
        results = [v.result(timeout=60) for v in visitors]
    out, _ = probe.communicate(timeout=60)
    for statuses in results:
        assert all(200 <= s < 400 for s in statuses), statuses
    # The probe's answer: STARTTLS without DANE delivers to `wrong` (exit 2, CRITICAL).
    state: dict[str, Any] = json.loads(out)
    assert probe.returncode == 2 and state["verdict"]["code"] == "does-not-validate", out
    log = nginx.access_log()
    assert {a for a, _, _, _ in log} == {"127.0.0.1"}
    assert [entry for entry in log if entry[1] >= 400] == []
    assert len(log) >= sum(map(len, results)) + 2  # the visitors' requests and the probe's


def test_an_open_live_stream_outlives_a_burst_from_its_own_address(front: tuple[Nginx, InProcess]) -> None:
    nginx, server = front
    with nginx.client("127.0.0.4") as client:
        test = client.post("/api/tests").json()
        with client.stream("GET", f"/api/tests/{test['alias']}/events") as events:
            assert events.status_code == 200 and events.headers["content-type"].startswith("text/event-stream")
            lines = events.iter_lines()
            first = next_event(lines)
            statuses = burst(client, f"/t/{test['alias']}?fragment=1")
            assert statuses.count(429) == 20
            # The stream, opened before the burst, still carries the next change at once.
            sent = time.monotonic()
            assert send(server.smtp_port, list(test["addresses"].values())) == {}
            update = next_event(lines)
            assert time.monotonic() - sent < 10
            assert update["event"] == "update" and update["id"] != first["id"]
            assert json.loads(update["data"])["probes"]["do"]["status"] == "delivered"
        # A new stream from an address over its limit is refused like any request (the page
        # then polls: static/app.js); asked right after a refusal, before a token comes back.
        assert burst(client, f"/t/{test['alias']}?fragment=1", refusals=2)[-1] == 429
        with client.stream("GET", f"/api/tests/{test['alias']}/events") as again:
            assert (again.status_code, json.loads(again.read())) == (429, TOO_MANY_JSON)

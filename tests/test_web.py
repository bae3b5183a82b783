"""The web app and JSON API over real HTTP, against a real `havedane serve`."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import pytest

from helpers import Serve, send


def test_create_test_returns_201_with_three_addresses(serve: Serve) -> None:
    status, body, headers = serve.request("POST", "/api/tests")
    assert status == 201
    alias = body["alias"]
    assert len(alias) >= 16 and alias.isalnum() and alias == alias.lower()
    assert body["addresses"] == {p: f"test@{alias}.{p}.x.test" for p in ("do", "dont", "wrong")}
    assert body["url"] == f"{serve.web}/t/{alias}"
    assert headers["location"] == f"/api/tests/{alias}"


def test_aliases_are_unique(serve: Serve) -> None:
    aliases = {serve.new_test()["alias"] for _ in range(5)}
    assert len(aliases) == 5


def test_fresh_test_is_pending(serve: Serve) -> None:
    alias = serve.new_test()["alias"]
    body = serve.result(alias)
    assert body["verdict"]["code"] == "pending"
    assert {n: p["status"] for n, p in body["probes"].items()} == {
        "do": "pending",
        "dont": "pending",
        "wrong": "pending",
    }
    assert body["probes"]["wrong"]["expect"] == "refuse"
    assert body["created"].endswith("Z")


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/api/tests/doesnotexist0000", 404),
        ("GET", "/api/tests/..%2f..%2fetc", 404),
        ("GET", "/api/tests/%00%ff", 404),
        ("GET", "/api/tests/" + "a" * 5000, 404),
        ("DELETE", "/api/tests", 405),
        ("PUT", "/api/tests/abc", 405),
        ("GET", "/api/nothing", 404),
        ("GET", "/api/tests/doesnotexist0000/events", 404),
    ],
)
def test_bad_requests_get_json_errors(serve: Serve, method: str, path: str, status: int) -> None:
    got, body, headers = serve.request(method, path)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert isinstance(body["error"], str) and body["error"]


def test_post_with_garbage_body_still_creates(serve: Serve) -> None:
    status, body, _ = serve.request("POST", "/api/tests", body=b"\xff\x00garbage")
    assert status == 201 and body["alias"]


def test_page_is_a_permalink_with_addresses_and_security_headers(serve: Serve) -> None:
    alias = serve.new_test()["alias"]
    conn = http.client.HTTPConnection("127.0.0.1", serve.web_port, timeout=5)
    conn.request("GET", f"/t/{alias}")
    resp = conn.getresponse()
    html = resp.read().decode()
    assert resp.status == 200
    for p in ("do", "dont", "wrong"):
        assert f"test@{alias}.{p}.x.test" in html
    assert "mailto:" in html
    csp = resp.getheader("content-security-policy") or ""
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert resp.getheader("x-content-type-options") == "nosniff"
    conn.request("GET", "/t/nosuchtest0000000")
    resp = conn.getresponse()
    assert resp.status == 404 and "no such test" in resp.read().decode()


def test_form_creates_and_redirects(serve: Serve) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", serve.web_port, timeout=5)
    conn.request("POST", "/new")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 303 and (resp.getheader("location") or "").startswith("/t/")


def read_event(resp: http.client.HTTPResponse, timeout: float = 10) -> tuple[str | None, dict[str, object]]:
    event: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = resp.fp.readline().decode().rstrip("\n")
        if not line:
            if "data" in event:
                return event.get("id"), json.loads(event["data"])
            event = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        event[key] = value
    raise AssertionError("no event")


def test_events_stream_updates_live(serve: Serve) -> None:
    t = serve.new_test()
    conn = http.client.HTTPConnection("127.0.0.1", serve.web_port, timeout=10)
    conn.request("GET", f"/api/tests/{t['alias']}/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type", "").startswith("text/event-stream")
    first_id, first = read_event(resp)
    assert first["verdict"]["code"] == "pending"  # type: ignore[index]
    send(serve.smtp_port, [t["addresses"]["do"]], sni="do.x.test")
    _, second = read_event(resp)
    assert second["probes"]["do"]["status"] == "delivered"  # type: ignore[index]
    conn.close()
    # Reconnecting with Last-Event-ID of the current state: nothing is re-sent until a change.
    conn = http.client.HTTPConnection("127.0.0.1", serve.web_port, timeout=10)
    last = serve.wait_for(t["alias"], lambda b: len(b["probes"]["do"]["sessions"]) == 1)  # the session is saved too
    conn.request("GET", f"/api/tests/{t['alias']}/events")
    current_id, state = read_event(conn.getresponse())
    # (the verdict may move meanwhile: the grace period is 2 s here)
    assert state["probes"]["do"] == last["probes"]["do"]  # type: ignore[index]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", serve.web_port, timeout=10)
    conn.request("GET", f"/api/tests/{t['alias']}/events", headers={"Last-Event-ID": current_id or ""})
    resp = conn.getresponse()
    send(serve.smtp_port, [t["addresses"]["dont"]])
    _, third = read_event(resp)
    assert third["probes"]["dont"]["status"] == "delivered"  # type: ignore[index]
    assert first_id != current_id


def test_rate_limit_per_client(setup_dir: Path) -> None:
    server = Serve(setup_dir, env={"HAVEDANE_LIMITS_TESTS_PER_MINUTE": "3"}).start()
    try:
        for _ in range(3):
            server.new_test()
        status, body, headers = server.request("POST", "/api/tests")
        assert status == 429 and headers["retry-after"] == "60" and "error" in body
    finally:
        server.stop()


def test_store_bound_refuses_new_tests_instead_of_evicting(setup_dir: Path) -> None:
    server = Serve(setup_dir, env={"HAVEDANE_RETENTION_MAX_TESTS": "2"}).start()
    try:
        first = server.new_test()["alias"]
        server.new_test()
        status, body, _ = server.request("POST", "/api/tests")
        assert status == 503 and "error" in body
        assert server.result(first)["alias"] == first
    finally:
        server.stop()


def test_status_read_right_after_the_250_shows_the_delivery(serve: Serve) -> None:
    """The API caches a test's JSON; a delivery must invalidate it before its 250 is sent."""
    t = serve.new_test()
    for _ in range(3):
        assert serve.result(t["alias"])["probes"]["do"]["status"] == "pending"  # now cached
    send(serve.smtp_port, [t["addresses"]["do"]], sni="do.x.test")
    assert serve.result(t["alias"])["probes"]["do"]["status"] == "delivered"  # no waiting


def test_a_cached_status_read_is_the_same_response_with_the_security_headers(serve: Serve) -> None:
    """The second read of a test's JSON is served from the cache: the same bytes, status and
    headers as the first (every security header included), not a shortcut without them."""
    alias = serve.new_test()["alias"]
    reads = []
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", serve.web_port, timeout=5)
        conn.request("GET", f"/api/tests/{alias}")
        resp = conn.getresponse()
        headers = sorted((k.lower(), v) for k, v in resp.getheaders() if k.lower() != "date")
        reads.append((resp.status, headers, resp.read()))
        conn.close()
    assert reads[0] == reads[1] == reads[2]
    status, headers, body = reads[0]
    names = dict(headers)
    assert status == 200 and json.loads(body)["alias"] == alias
    assert names["content-type"] == "application/json" and names["content-length"] == str(len(body))
    assert names["cache-control"] == "no-store"
    assert names["x-content-type-options"] == "nosniff" and names["x-frame-options"] == "DENY"
    assert names["referrer-policy"] == "no-referrer" and "frame-ancestors 'none'" in names["content-security-policy"]

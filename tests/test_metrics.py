"""GET /metrics: the Prometheus text, read by prometheus_client's own parser, moving with
real deliveries over SMTP, real dnstap frames and real limits; served to `[web] metrics_from` only."""

from __future__ import annotations

import asyncio
import http.client
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from havedane.metrics import Metrics
from helpers import send
from inprocess import InProcess, asgi_app
from test_dnstap import Sender, query_and_response
from test_limits import Client

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; an absent one is 0, as Prometheus reads a counter not yet moved."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(server: InProcess) -> Samples:
    with urllib.request.urlopen(server.web + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(resp.read().decode())


def scrape_until(server: InProcess, done: Callable[[Samples], bool], timeout: float = 10) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_the_counters_move_with_a_delivery_over_smtp(setup_dir: Path) -> None:
    env = {"HAVEDANE_VERDICT_GRACE": "2", "HAVEDANE_SMTP_MAX_RECIPIENTS": "2"}
    server = InProcess(setup_dir, env=env).start()
    try:
        before = scrape(server)
        assert value(before, "havedane_tests_created_total") == 0
        # Every limit is there from the start, at 0 (a rate over it needs a first sample).
        assert ("havedane_limit_hits_total", (("kind", "max_recipients"),)) in before
        assert ("havedane_limit_hits_total", (("kind", "tests_per_minute"),)) in before
        assert value(before, "process_resident_memory_bytes") > 0
        t = server.new_test()
        a = t["addresses"]
        # One message to all three probes; the third recipient is beyond [smtp] max_recipients.
        refused = send(server.smtp_port, [a["do"], a["dont"], a["wrong"]], sni="do.x.test")
        assert list(refused) == [a["wrong"]] and refused[a["wrong"]][0] == 452
        server.wait_for(t["alias"], lambda b: b["verdict"]["code"] == "validates")  # `wrong` stayed away
        server.result(t["alias"])  # read again: still one test reaching `validates`
        after = scrape_until(server, lambda s: value(s, "havedane_sessions_total", probe="do", outcome="delivered") > 0)
    finally:
        assert server.stop() == 0, "".join(server.output)
    assert value(after, "havedane_tests_created_total") == 1
    assert value(after, "havedane_deliveries_total", probe="do", tls="yes") == 1
    assert value(after, "havedane_deliveries_total", probe="dont", tls="yes") == 1
    assert value(after, "havedane_deliveries_total", probe="wrong", tls="yes") == 0
    assert value(after, "havedane_sessions_total", probe="do", outcome="delivered") == 1
    assert value(after, "havedane_limit_hits_total", kind="max_recipients") == 1
    assert value(after, "havedane_verdicts_total", code="validates") == 1
    assert value(after, "havedane_verdicts_total", code="does-not-validate") == 0
    for operation in ("create_test", "add_deliveries", "save_session"):
        assert value(after, "havedane_store_write_seconds_count", operation=operation) == 1, operation
        assert value(after, "havedane_store_write_seconds_sum", operation=operation) > 0


def test_smtp_limits_are_counted_by_their_key(setup_dir: Path) -> None:
    env = {"HAVEDANE_SMTP_MAX_CONNECTIONS_PER_CLIENT": "1", "HAVEDANE_SMTP_MAX_MESSAGE_SIZE": "1000"}
    server = InProcess(setup_dir, env=env).start()
    opened: list[Client] = []
    try:
        opened.append(first := Client(server.smtp_port, "127.0.0.2"))
        assert first.reply()[0] == 220
        opened.append(second := Client(server.smtp_port, "127.0.0.2"))
        assert second.reply()[0] == 421
        assert first.cmd("EHLO sender.example")[0] == 250
        assert first.cmd("MAIL FROM:<a@sender.example> SIZE=5000")[0] == 552  # announced beyond the limit
        assert first.cmd("MAIL FROM:<a@sender.example>")[0] == 250
        assert first.cmd(f"RCPT TO:<{server.new_test()['addresses']['dont']}>")[0] == 250
        assert first.cmd("DATA")[0] == 354
        first.send((b"x" * 78 + b"\r\n") * 30 + b".\r\n")
        assert first.reply()[0] == 552  # longer than allowed, unannounced
        samples = scrape(server)
    finally:
        for client in opened:
            client.close()
        assert server.stop() == 0, "".join(server.output)
    assert value(samples, "havedane_limit_hits_total", kind="max_connections_per_client") == 1
    assert value(samples, "havedane_limit_hits_total", kind="max_message_size") == 2
    assert value(samples, "havedane_limit_hits_total", kind="max_connections") == 0


def test_open_live_pages_are_a_gauge(serve: InProcess) -> None:
    alias = serve.new_test()["alias"]
    assert value(scrape(serve), "havedane_event_streams_open") == 0
    conn = http.client.HTTPConnection("127.0.0.1", serve.web_port, timeout=10)
    conn.request("GET", f"/api/tests/{alias}/events")
    resp = conn.getresponse()
    assert resp.status == 200
    resp.readline()  # the stream has begun
    assert value(scrape(serve), "havedane_event_streams_open") == 1
    conn.close()
    closed = scrape_until(serve, lambda s: value(s, "havedane_event_streams_open") == 0)
    assert value(closed, "havedane_event_streams_open") == 0


def test_dnstap_frames_are_counted(setup_dir: Path, tmp_path: Path) -> None:
    socket = tmp_path / "dnstap.sock"
    server = InProcess(setup_dir, env={"HAVEDANE_DNS_DNSTAP_SOCKET": str(socket)}).start()
    try:
        alias = server.new_test()["alias"]

        async def feed() -> None:
            knot = await Sender.connect(socket)
            await knot.handshake()
            for frame in query_and_response(f"_25._tcp.{alias}.do.x.test", "TLSA", 7):
                knot.data(frame)
            knot.data(b"\xff\x00 not a protobuf")
            knot.data(query_and_response("elsewhere.example", "A", 8)[1])  # outside the zone
            await knot.stop()

        asyncio.run(feed())
        after = scrape_until(server, lambda s: value(s, "havedane_dnstap_queries_total", result="stored") > 0)
    finally:
        assert server.stop() == 0, "".join(server.output)
    assert value(after, "havedane_dnstap_connections_total") == 1
    assert value(after, "havedane_dnstap_frames_total") == 4
    assert value(after, "havedane_dnstap_malformed_frames_total") == 1
    assert value(after, "havedane_dnstap_queries_total", result="stored") == 1
    assert value(after, "havedane_dnstap_queries_total", result="outside") == 1
    assert value(after, "havedane_store_write_seconds_count", operation="add_dns_queries") >= 1


@pytest.mark.anyio
async def test_web_limits_are_counted_by_their_key(setup_dir: Path) -> None:
    async with asgi_app(setup_dir, {"HAVEDANE_LIMITS_TESTS_PER_MINUTE": "1"}) as app:
        await app.new_test()
        assert (await app.request("POST", "/api/tests"))[0] == 429
        assert (await app.http.post("/new")).status_code == 429  # the form counts as well
        resp = await app.http.get("/metrics")
    samples = parse(resp.text)
    assert value(samples, "havedane_tests_created_total") == 1
    assert value(samples, "havedane_limit_hits_total", kind="tests_per_minute") == 2
    assert value(samples, "havedane_limit_hits_total", kind="tests_per_minute_total") == 0


@pytest.mark.parametrize(
    ("client", "env", "headers"),
    [
        ("192.0.2.7", {}, {}),  # not a loopback address
        ("10.1.2.3", {"HAVEDANE_WEB_METRICS_FROM": "10.0.0.0/8"}, {"X-Forwarded-For": "10.1.2.3"}),  # not a proxy
        # A proxy on this host that no trusted_proxies names: the visitor could be anyone.
        ("127.0.0.1", {}, {"X-Forwarded-For": "192.0.2.7"}),
        ("127.0.0.1", {}, {"Forwarded": "for=192.0.2.7"}),
        # A trusted proxy relays a visitor from the Internet.
        ("127.0.0.1", {"HAVEDANE_WEB_TRUSTED_PROXIES": "127.0.0.1/32"}, {"X-Forwarded-For": "192.0.2.7"}),
        ("127.0.0.1", {"HAVEDANE_WEB_METRICS_FROM": ""}, {}),  # [] : nobody
    ],
)
@pytest.mark.anyio
async def test_metrics_are_refused_outside_metrics_from(
    setup_dir: Path, client: str, env: dict[str, str], headers: dict[str, str]
) -> None:
    async with asgi_app(setup_dir, env, client=client) as app:
        resp = await app.http.get("/metrics", headers=headers)
    assert resp.status_code == 403
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"error": "metrics are served only to the networks of [web] metrics_from"}


@pytest.mark.parametrize(
    ("client", "env", "headers"),
    [
        ("127.0.0.1", {}, {}),
        ("::1", {}, {}),
        ("::ffff:127.0.0.1", {}, {}),  # a dual-stack listener's view of 127.0.0.1
        ("127.0.0.1", {"HAVEDANE_WEB_TRUSTED_PROXIES": "127.0.0.1/32"}, {}),  # Prometheus beside nginx
        ("192.0.2.7", {"HAVEDANE_WEB_METRICS_FROM": "192.0.2.0/24"}, {}),
        (
            "127.0.0.1",
            {"HAVEDANE_WEB_TRUSTED_PROXIES": "127.0.0.1/32", "HAVEDANE_WEB_METRICS_FROM": "10.0.0.0/8"},
            {"X-Forwarded-For": "10.1.2.3"},
        ),
    ],
)
@pytest.mark.anyio
async def test_metrics_are_served_to_metrics_from(
    setup_dir: Path, client: str, env: dict[str, str], headers: dict[str, str]
) -> None:
    async with asgi_app(setup_dir, env, client=client) as app:
        resp = await app.http.get("/metrics", headers=headers)
    assert resp.status_code == 200
    assert ("havedane_tests_created_total", ()) in parse(resp.text)


def test_a_process_shows_only_the_parts_it_runs() -> None:
    """`serve --role web` runs no receiver: its SMTP counters are not shown at 0, they are absent."""
    names = {f.name for f in Metrics(["web"]).registry.collect()}
    assert {"havedane_tests_created", "havedane_verdicts", "havedane_event_streams_open"} <= names
    assert not {"havedane_deliveries", "havedane_sessions"} & names
    kinds = {s.labels["kind"] for f in Metrics(["web"]).registry.collect() for s in f.samples if "kind" in s.labels}
    assert "tests_per_minute" in kinds and "max_recipients" not in kinds
    assert "havedane_deliveries" in {f.name for f in Metrics(["smtp"]).registry.collect()}

"""What DNS shows, on the page: the diagnosis beside the verdict and the DNS queries in the
timeline. First rendered from real verdicts without a browser, then in Chromium against a real
`havedane serve` whose dnstap reader is fed real Frame Streams frames on its unix socket (the
frames Knot's mod-dnstap sends: test_dnstap_knot.py reads them from a real Knot)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import dns.message
import fstrm
import pytest
from dnstap_pb import dnstap_pb2
from playwright.sync_api import Page, expect

from havedane import probes, report
from havedane.dns.evidence import DnsEvidence
from havedane.dns.queries import DnsQuery, probe_hosts, tie
from havedane.dnstap import CONTENT_TYPE
from havedane.model import Test
from havedane.verdict import evaluate
from havedane.web import timeline

from .browser_harness import DOMAIN, SERVER_ENV, Server, deliver
from .test_page_model import CLIENT, CONFIG, ENV, T0, delivery, text

RESOLVER = "198.51.100.53"
HOSTS = probe_hosts(DOMAIN, tuple(probes.CATALOGUE.values()))


def dns_state(queries: list[DnsQuery] | None) -> dict[str, Any]:
    """A test whose sender delivered everywhere, wrong included, with these DNS queries."""
    test = Test("abc", T0, CLIENT)
    deliveries = [delivery(p, T0 + 2) for p in ("do", "dont", "wrong")]
    evidence = None if queries is None else DnsEvidence(True, tuple(tie(q, HOSTS) for q in queries))
    verdict = evaluate(CONFIG.probes, test, [], deliveries, T0 + 10, CONFIG.grace, DOMAIN, None, evidence)
    return report.to_json(CONFIG, report.Report(test, verdict, T0 + 10))


def q(qname: str, qtype: str, at: float, do: bool = True) -> DnsQuery:
    return DnsQuery(at, RESOLVER, "udp", qname, qtype, do, "NOERROR")


def render(r: dict[str, Any]) -> str:
    return ENV.get_template("result.html").render(r=r, state="s")


def test_the_diagnosis_is_beside_the_verdict_and_queries_are_in_the_timeline() -> None:
    r = dns_state([q(f"abc.wrong.{DOMAIN}", "A", T0 + 1), q(f"abc.wrong.{DOMAIN}", "A", T0 + 1.2),
                   q(DOMAIN, "DNSKEY", T0 + 1.1)])  # fmt: skip
    assert (r["verdict"]["code"], r["dns"]["finding"]) == ("does-not-validate", "resolver-validates")
    html = render(r)
    before, after = html.split('id="diagnosis"', 1)
    assert 'id="verdict"' in before and 'id="timeline-h"' in after  # right after the verdict
    words = unescape(text(html))
    assert r["dns"]["lead"] in words and all(d in words for d in r["dns"]["details"])
    events = timeline.timeline(r).events
    asked = [e for e in events if e.text.startswith("DNS query")]
    # the repeated A query is one row with a count; the DNSKEY fetch is marked as tied by address and time
    assert [dict(e.facts)["asked"] for e in asked] == [f"A abc.wrong.{DOMAIN}", f"DNSKEY {DOMAIN}"]
    assert ("seen", "2 times") in asked[0].facts and ("from", RESOLVER) in asked[0].facts
    assert "resolver's address and the time" in asked[1].text and "address" not in asked[0].text
    # interleaved with the SMTP events, in time order
    assert [e.text.split(" ")[0] for e in events][:4] == ["Test", "DNS", "DNS", "Message"]


def test_a_query_name_from_the_network_is_escaped() -> None:
    html = render(dns_state([q(f"<b>x</b>.abc.wrong.{DOMAIN}", "A", T0 + 1)]))
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


def test_without_a_feed_the_page_says_dns_evidence_is_not_available() -> None:
    r = dns_state(None)
    assert r["dns"]["available"] is False and r["dns"]["queries"] == []
    assert "DNS evidence is not available on this deployment" in unescape(text(render(r)))
    assert not [e for e in timeline.timeline(r).events if e.text.startswith("DNS")]
    assert r["verdict"]["code"] == "does-not-validate"  # everything else as before


# -- in Chromium, with a real dnstap reader ---------------------------------------------------


def frame(qname: str, qtype: str, response: bool, resolver: str = RESOLVER, qid: int = 1) -> bytes:
    """One dnstap message as Knot's mod-dnstap logs it (AUTH_QUERY, AUTH_RESPONSE), timed now."""
    query = dns.message.make_query(qname, qtype, want_dnssec=True)
    query.id = qid
    now = time.time()
    msg = dnstap_pb2.Message(
        type=dnstap_pb2.Message.AUTH_RESPONSE if response else dnstap_pb2.Message.AUTH_QUERY,
        socket_family=dnstap_pb2.INET, socket_protocol=dnstap_pb2.UDP,
        query_address=socket.inet_aton(resolver), response_address=socket.inet_aton("127.0.0.1"),
        query_port=40000 + qid, response_port=53,
    )  # fmt: skip
    if response:
        msg.response_message = dns.message.make_response(query).to_wire()
        msg.response_time_sec, msg.response_time_nsec = int(now), int(now % 1 * 1e9)
    else:
        msg.query_message = query.to_wire()
        msg.query_time_sec, msg.query_time_nsec = int(now), int(now % 1 * 1e9)
    return dnstap_pb2.Dnstap(type=dnstap_pb2.Dnstap.MESSAGE, message=msg).SerializeToString()  # type: ignore[no-any-return]


def feed(path: Path, questions: list[tuple[str, str]]) -> None:
    """A Frame Streams sender in bidirectional mode, as Knot is: READY, ACCEPT, START, data, STOP, FINISH."""
    codec = fstrm.FstrmCodec()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))

        def control() -> int:
            while not codec.process():
                chunk = s.recv(4096)
                assert chunk, "the reader closed the connection"
                codec.append(chunk)
            kind: int = codec.decode()[0]
            return kind

        s.sendall(codec.encode_ctrlready(CONTENT_TYPE))
        assert control() == fstrm.FSTRM_CONTROL_ACCEPT
        s.sendall(codec.encode_ctrlstart(CONTENT_TYPE))
        for qid, (qname, qtype) in enumerate(questions, 1):
            s.sendall(codec.encode_data(frame(qname, qtype, False, qid=qid)))
            s.sendall(codec.encode_data(frame(qname, qtype, True, qid=qid)))
        s.sendall(codec.encode(ctrl=fstrm.FSTRM_CONTROL_STOP))
        assert control() == fstrm.FSTRM_CONTROL_FINISH


@pytest.fixture(scope="module")
def tapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A server whose deployment has a dnstap feed ([dns] dnstap_socket)."""
    directory = tmp_path_factory.mktemp("tap")
    sock = directory / "dnstap.sock"
    srv = Server(directory / "setup", {**SERVER_ENV, "HAVEDANE_DNS_DNSTAP_SOCKET": str(sock)}).init().start()
    yield srv, sock
    srv.stop()


@pytest.mark.browser
def test_the_diagnosis_and_the_dns_queries_show_on_the_page(page: Page, tapped: tuple[Server, Path]) -> None:
    server, sock = tapped
    test = server.new_test()
    alias = test["alias"]
    page.goto(f"{server.web}/t/{alias}")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    # What a validating resolver asks for a sender without DANE: the zone's keys, the hosts' MX
    # and A records, no TLSA.
    feed(
        sock,
        [(DOMAIN, "DNSKEY")] + [(f"{alias}.{p}.{DOMAIN}", t) for p in ("do", "dont", "wrong") for t in ("MX", "A")],
    )
    for name in ("do", "dont", "wrong"):
        deliver(server.smtp_port, test["addresses"][name])
    expect(page.locator("#verdict")).to_have_attribute("data-code", "does-not-validate")
    diagnosis = page.locator("#diagnosis")
    expect(diagnosis).to_have_attribute("data-finding", "resolver-validates")
    expect(diagnosis.locator(".dns-lead")).to_contain_text("Your server's resolver validates DNSSEC")
    expect(diagnosis.locator(".dns-lead")).to_contain_text(RESOLVER)
    expect(diagnosis.locator(".dns-lead")).to_contain_text("DANE is not enabled in your mail server")
    rows = page.locator("ol.events li.event", has_text="DNS query")
    expect(rows).to_have_count(7)
    expect(rows.first).to_contain_text(f"DNSKEY {DOMAIN}")
    expect(rows.first).to_contain_text("tied to this test by the resolver's address and the time")
    expect(page.locator("ol.events")).to_contain_text(f"A {alias}.wrong.{DOMAIN}")
    expect(page.locator("ol.events")).to_contain_text("Message accepted")
    # The long query names wrap on a phone: no sideways scrolling.
    page.set_viewport_size({"width": 375, "height": 800})
    expect(rows.first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375

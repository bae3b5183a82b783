"""DNS evidence from a real Knot: knotd (Knot 3.2 with mod-dnstap, as on Debian 12), on the
configuration `havedane zone --sign --knot-conf --dnstap-socket` wrote, streams its
queries to a real `havedane serve --role dns`, which stores them; the queries are made
with dnspython to that Knot, and read back from the store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from havedane.dns.queries import DnsQuery
from havedane.model import Test
from havedane.store import open_store
from helpers import free_port, require

DOMAIN = "x.test"
ALIAS = "k7q2m9x4c1v8b3n6"  # an alias as web.app.new_alias makes them


@dataclass
class Setup:
    dir: Path
    env: dict[str, str]
    db: str
    conf: Path
    port: int


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "havedane", *args], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip


def stored(db: str, alias: str, resolvers: list[str]) -> list[DnsQuery]:
    async def read() -> list[DnsQuery]:
        store = open_store(db)
        await store.open()
        try:
            return await store.dns_queries_for(alias, resolvers, 0)
        finally:
            await store.close()

    return asyncio.run(read())


def create_test(db: str, alias: str) -> None:
    async def create() -> None:
        store = open_store(db)
        await store.open()
        try:
            await store.create_test(Test(alias, time.time(), "192.0.2.1"))
        finally:
            await store.close()

    asyncio.run(create())


@pytest.fixture
def knot_setup(tmp_path: Path) -> Iterator[Setup]:
    socket = tmp_path / "dnstap.sock"
    env = {**os.environ, "HAVEDANE_DNS_DNSTAP_SOCKET": str(socket)}
    assert run(["init", "--domain", DOMAIN, "--dir", str(tmp_path)], env).returncode == 0
    config = str(tmp_path / "havedane.toml")
    out = run(["zone", "--config", config, "--sign", "--address", "192.0.2.7", "--out", str(tmp_path / "x.test.zone"),
               "--knot-conf", str(tmp_path / "knot.conf")], env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "knot.conf").read_text()
    assert f'mod-dnstap:\n  - id: tap\n    sink: "unix:{socket}"\n    log-queries: on\n    log-responses: on\n' in conf
    assert "template:\n  - id: default\n    global-module: mod-dnstap/tap\n" in conf
    port = free_port()
    # As in test_knot_conf: loopback, a free port, run directory and storage in tmp_path.
    conf = conf.replace("listen: 0.0.0.0@53", f'listen: 127.0.0.1@{port}\n    rundir: "{tmp_path}"')
    conf = conf.replace("template:\n  - id: default\n", f'template:\n  - id: default\n    storage: "{tmp_path}"\n')
    conf += f'database:\n    storage: "{tmp_path}"\nlog:\n  - target: stderr\n    any: info\n'
    (tmp_path / "knot.conf").write_text(conf)
    yield Setup(tmp_path, env, f"sqlite:///{tmp_path / 'havedane.sqlite3'}", tmp_path / "knot.conf", port)


def ask(port: int, name: str, rdtype: str, dnssec: bool = True, tcp: bool = False) -> dns.message.Message:
    msg = dns.message.make_query(name, rdtype, want_dnssec=dnssec)
    if tcp:
        return dns.query.tcp(msg, "127.0.0.1", timeout=2, port=port)
    return dns.query.udp(msg, "127.0.0.1", timeout=2, port=port)


def wait_for(db: str, alias: str, count: int, timeout: float = 15) -> list[DnsQuery]:
    """Knot sends frames in batches (measured with Knot 3.2: median 0.8 s, up to 2 s after the
    query); the reader commits every 0.2 s."""
    deadline = time.monotonic() + timeout
    while True:
        found = stored(db, alias, ["127.0.0.1"])
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_queries_to_a_real_knot_are_stored_with_their_test_type_do_bit_and_code(knot_setup: Setup) -> None:
    knotd, knotc = require("knotd"), require("knotc")
    s = knot_setup
    reader = subprocess.Popen(
        [sys.executable, "-m", "havedane", "serve", "--config", str(s.dir / "havedane.toml"), "--role", "dns"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=s.env,
    )  # fmt: skip
    assert reader.stdout is not None
    ready = reader.stdout.readline()
    assert ready.startswith("havedane ") and "dnstap on" in ready, ready
    create_test(s.db, ALIAS)
    log = s.dir / "knotd.log"
    with log.open("wb") as sink:
        knot = subprocess.Popen([knotd, "-c", str(s.conf)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if ask(s.port, DOMAIN, "SOA").rcode() == dns.rcode.NOERROR:
                    break
            except (dns.exception.DNSException, OSError):
                pass
            assert time.monotonic() < deadline and knot.poll() is None, log.read_text()
            time.sleep(0.2)
        tlsa = ask(s.port, f"_25._tcp.{ALIAS}.do.{DOMAIN}", "TLSA")
        ask(s.port, f"{ALIAS}.wrong.{DOMAIN}", "A", dnssec=False, tcp=True)
        ask(s.port, DOMAIN, "DNSKEY", tcp=True)
        ask(s.port, f"_25._tcp.nosuchtest.do.{DOMAIN}", "TLSA")  # an alias of no test: not kept
        ask(s.port, "elsewhere.example", "A")  # not our zone (Knot refuses): not kept

        found = wait_for(s.db, ALIAS, 4)
        seen = {(q.alias, q.qname, q.qtype, q.dnssec_ok, q.rcode, q.transport) for q in found}
        assert {
            (ALIAS, f"_25._tcp.{ALIAS}.do.{DOMAIN}", "TLSA", True, dns.rcode.to_text(tlsa.rcode()), "udp"),
            (ALIAS, f"{ALIAS}.wrong.{DOMAIN}", "A", False, "NOERROR", "tcp"),  # from *.wrong
            (None, DOMAIN, "DNSKEY", True, "NOERROR", "tcp"),  # zone-level
        } <= seen, found
        # Beside those, only the readiness probes above (SOA of the zone), zone-level too.
        assert {(q.qname, q.qtype) for q in found if q.alias is None} == {(DOMAIN, "DNSKEY"), (DOMAIN, "SOA")}, found
        ours = [q for q in found if q.alias == ALIAS]
        assert len(ours) == 2, found
        assert all(q.resolver == "127.0.0.1" and q.server == "127.0.0.1" for q in found), found
        assert all(abs(q.time - time.time()) < 30 for q in found), found
        assert stored(s.db, "nosuchtest", ["203.0.113.1"]) == []

        # `knotc reload` opens a new connection before it closes the old one: both are read.
        reload = subprocess.run([knotc, "-c", str(s.conf), "reload"], capture_output=True, text=True, timeout=30)
        assert reload.returncode == 0, reload.stdout + reload.stderr
        time.sleep(0.5)
        ask(s.port, f"_25._tcp.{ALIAS}.dont.{DOMAIN}", "TLSA")
        after = wait_for(s.db, ALIAS, len(found) + 1)
        assert f"_25._tcp.{ALIAS}.dont.{DOMAIN}" in {q.qname for q in after if q.alias == ALIAS}, after
    finally:
        knot.terminate()
        knot.wait(10)
        reader.terminate()
        rest, _ = reader.communicate(timeout=10)
    assert reader.returncode == 0, rest
    assert "malformed" not in rest, rest

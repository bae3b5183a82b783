"""`havedane zone --sign --knot-conf`: real knotd (Knot 3.2, as on Debian 12) started on
the configuration exactly as written (only its listen address, run directory and
storage moved into the test's directory) serves every zone it wrote, authoritatively,
and every probe has the DNS shape the catalogue gives it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset

from havedane import probes
from helpers import free_port, make_setup, require

DOMAIN = "x.test"
ALL = tuple(probes.CATALOGUE.values())  # the matrix is on: every probe of the catalogue
# A zone's DNSKEY RRset, by apex (an RRset is the Rdataset dns.dnssec.validate takes).
Keys = dict[dns.name.Name, dns.node.Node | dns.rdataset.Rdataset]


class Knot:
    """A knotd on 127.0.0.1:<port>, asked directly (no resolver in between)."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log

    def ask(self, name: str, rdtype: str) -> dns.message.Message:
        msg = dns.message.make_query(name, rdtype, want_dnssec=True)
        reply, _ = dns.query.udp_with_fallback(msg, "127.0.0.1", timeout=2, port=self.port)
        return reply

    def authoritative(self, name: str, rdtype: str) -> dns.message.Message:
        """The answer, which must be authoritative (AA) and NOERROR or NXDOMAIN: an
        answer of a zone that Knot loaded (RFC 1035 §4.1.1), not a refusal or SERVFAIL."""
        reply = self.ask(name, rdtype)
        rcode = dns.rcode.to_text(reply.rcode())
        where = f"{name} {rdtype}: rcode {rcode}, flags {dns.flags.to_text(reply.flags)}; knotd log:\n{self.tail()}"
        assert rcode in ("NOERROR", "NXDOMAIN") and reply.flags & dns.flags.AA, where
        return reply

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def rrset(reply: dns.message.Message, name: str, rdtype: str, covers: str | None = None) -> dns.rrset.RRset | None:
    owner = dns.name.from_text(name)
    want = dns.rdatatype.from_text(rdtype)
    cov = dns.rdatatype.from_text(covers) if covers else dns.rdatatype.NONE
    for section in (reply.answer, reply.authority):
        for r in section:
            if r.name == owner and r.rdtype == want and r.covers == cov:
                return r
    return None


def keys(knot: Knot, apex: str) -> Keys:
    reply = knot.authoritative(apex, "DNSKEY")
    dnskey = rrset(reply, apex, "DNSKEY")
    assert dnskey is not None, f"{apex}: no DNSKEY"
    return {dns.name.from_text(apex): dnskey}


def validates(reply: dns.message.Message, name: str, rdtype: str, zone_keys: Keys) -> bool:
    data, sig = rrset(reply, name, rdtype), rrset(reply, name, "RRSIG", covers=rdtype)
    assert data is not None and sig is not None, f"{name} {rdtype}: missing data or RRSIG in {reply}"
    try:
        dns.dnssec.validate(data, sig, zone_keys)
    except dns.exception.ValidationFailure:
        return False
    return True


def test_knot_serves_every_zone_written_and_every_probe_has_its_shape(tmp_path: Path) -> None:
    knotd, knotc = require("knotd"), require("knotc")
    env = {**os.environ, "HAVEDANE_PROBES_MATRIX": "true",
           "HAVEDANE_PROBES_ADDRESSES": "notls=192.0.2.8,unusable-notls=192.0.2.9,ta-notls=192.0.2.10"}  # fmt: skip
    run = [sys.executable, "-m", "havedane"]
    make_setup(tmp_path, DOMAIN)
    out = subprocess.run(
        [*run, "zone", "--config", str(tmp_path / "havedane.toml"), "--sign", "--address", "192.0.2.7",
         "--out", str(tmp_path / "x.test.zone"), "--knot-conf", str(tmp_path / "knot.conf")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    zones = [DOMAIN, f"bogus.{DOMAIN}", f"unsigned.{DOMAIN}"]
    assert all((tmp_path / f"{z}.zone").exists() for z in zones)
    conf = (tmp_path / "knot.conf").read_text()
    port = free_port()
    # The sample listens on all addresses at 53; here: loopback, a free port, a run
    # directory, storage in tmp_path, and a log to read when a zone is not served.
    assert "listen: 0.0.0.0@53" in conf and "template:\n  - id: default\n" in conf
    conf = conf.replace("listen: 0.0.0.0@53", f'listen: 127.0.0.1@{port}\n    rundir: "{tmp_path}"')
    conf = conf.replace("template:\n  - id: default\n", f'template:\n  - id: default\n    storage: "{tmp_path}"\n')
    conf += f'database:\n    storage: "{tmp_path}"\nlog:\n  - target: stderr\n    any: info\n'
    (tmp_path / "knot.conf").write_text(conf)
    check = subprocess.run([knotc, "-c", str(tmp_path / "knot.conf"), "conf-check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = tmp_path / "knotd.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([knotd, "-c", str(tmp_path / "knot.conf")], stdout=sink, stderr=subprocess.STDOUT)
    knot = Knot(port, log)
    try:
        # Loaded: every zone answers its SOA (a zone Knot refused answers SERVFAIL).
        deadline = time.monotonic() + 15
        while True:
            try:
                if all(knot.ask(z, "SOA").rcode() == dns.rcode.NOERROR for z in zones):
                    break
            except (dns.exception.DNSException, OSError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.2)
        for z in zones:
            soa = knot.authoritative(z, "SOA")
            assert soa.rcode() == dns.rcode.NOERROR and rrset(soa, z, "SOA") is not None, (z, soa)
        shape(knot)
    finally:
        proc.terminate()
        proc.wait(10)


def shape(knot: Knot) -> None:
    """Each probe as the catalogue describes it, seen at the authoritative server."""
    parent = keys(knot, DOMAIN)
    bogus_keys = keys(knot, f"bogus.{DOMAIN}")
    denial_keys = keys(knot, f"mxdenial.{DOMAIN}")
    unsigned = knot.authoritative(f"unsigned.{DOMAIN}", "DNSKEY")
    assert rrset(unsigned, f"unsigned.{DOMAIN}", "DNSKEY") is None, "the unsigned child zone has a DNSKEY"

    # The delegations in the parent: bogus with a DS of its key; unsigned with none,
    # and a signed NSEC3 matching its name, with NS and without DS, that proves there
    # is none (RFC 5155 §8.9: insecure; no opt-out).
    ds = knot.authoritative(f"bogus.{DOMAIN}", "DS")
    assert validates(ds, f"bogus.{DOMAIN}", "DS", parent)
    [bogus_key] = [k for k in bogus_keys[dns.name.from_text(f"bogus.{DOMAIN}")] if k.flags & 0x0001]
    published = rrset(ds, f"bogus.{DOMAIN}", "DS")
    assert published is not None and dns.dnssec.make_ds(f"bogus.{DOMAIN}.", bogus_key, "SHA256") in published
    no_ds = knot.authoritative(f"unsigned.{DOMAIN}", "DS")
    assert rrset(no_ds, f"unsigned.{DOMAIN}", "DS") is None
    hashed = dns.dnssec.nsec3_hash(f"unsigned.{DOMAIN}.", None, 0, 1).lower() + f".{DOMAIN}."
    assert validates(no_ds, hashed, "NSEC3", parent)
    [nsec3] = rrset(no_ds, hashed, "NSEC3") or []
    assert "NS" in nsec3.to_text().split() and "DS" not in nsec3.to_text().split(), nsec3
    assert not any(r.rdtype == dns.rdatatype.NSEC for r in no_ds.authority), no_ds

    # Every probe at a test's host nobody asked for: answered from the wildcard (RFC 4592).
    for p in ALL:
        host, tls_host = p.host(DOMAIN, "t0fresh0alias") + ".", p.tls_host(DOMAIN, "t0fresh0alias") + "."
        zones = {probes.Zone.PARENT: parent, probes.Zone.BOGUS: bogus_keys, probes.Zone.BOGUS_DENIAL: denial_keys}
        zone_keys = zones.get(p.zone)
        mx = knot.authoritative(host, "MX")
        mx_rrset = rrset(mx, host, "MX")
        # mx and others: their MX hosts, the same for every test; the rest none (the host's own address).
        want_mx = [f"{pref} {mx_host}." for pref, mx_host in p.mx_records(DOMAIN)]
        assert sorted(r.to_text() for r in mx_rrset or []) == want_mx, (p.name, mx)
        address = knot.authoritative(tls_host, "A")
        assert rrset(address, tls_host, "A") is not None, (p.name, address)
        owner = f"_25._tcp.{tls_host}"
        answer = knot.authoritative(owner, "TLSA")
        found = rrset(answer, owner, "TLSA")
        if p.tlsa is probes.Tlsa.NONE:
            assert found is None and answer.rcode() == dns.rcode.NOERROR, (p.name, answer)  # NODATA
            assert any(r.rdtype == dns.rdatatype.NSEC3 for r in answer.authority), (p.name, answer)  # denial
        else:
            assert found is not None and len(found) > 0, (p.name, answer)
        if p.zone is probes.Zone.UNSIGNED:
            # Nothing signed here: a validator sees it as insecure through the parent's NSEC3.
            assert not [r for r in [*answer.answer, *address.answer] if r.rdtype == dns.rdatatype.RRSIG], p.name
        elif p.zone is probes.Zone.BOGUS_DENIAL:
            # The NODATA's one NSEC3 (RFC 5155 §7.2.3) carries a broken signature; the address does not.
            assert zone_keys is not None and validates(address, tls_host, "A", zone_keys), p.name
            [nsec3] = [r for r in answer.authority if r.rdtype == dns.rdatatype.NSEC3]
            assert not validates(answer, nsec3.name.to_text(), "NSEC3", zone_keys), p.name
        elif p.zone is probes.Zone.BOGUS:
            assert zone_keys is not None
            assert validates(address, tls_host, "A", zone_keys), p.name  # the zone itself is signed correctly
            assert not validates(answer, owner, "TLSA", zone_keys), f"{p.name}: the TLSA signature is not broken"
        elif found is not None:
            assert zone_keys is not None
            assert validates(answer, owner, "TLSA", zone_keys) and validates(address, tls_host, "A", zone_keys), p.name

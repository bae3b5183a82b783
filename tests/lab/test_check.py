"""`havedane check` against the lab: it passes on the correct deployment and names the
problem on broken ones (unsigned zone, a TLSA that does not match the served
certificate, a receiver that is down)."""

from __future__ import annotations

import contextlib
import datetime
import re
import sys
from collections.abc import Callable, Iterator

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.zone
import pytest

from havedane import config as configmod
from havedane import pki, zonekeys
from havedane.dns import sign, tlsa, zone

from . import dnsservers, world
from .netns import stop, wait_until

pytestmark = pytest.mark.lab


def check(lab: world.World, resolver: str, *extra: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", "havedane", "check", "--config", str(lab.config), "--resolver", resolver, *extra]
    proc = lab.ns.run(argv, timeout=120, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout


def failures(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL")]


def variant(
    lab: world.World,
    signed: bool,
    change: Callable[[dns.zone.Zone], None] | None = None,
    now: datetime.datetime | None = None,
) -> str:
    """The deployment's zone, rebuilt the way `havedane zone` builds it, changed, and
    (when `signed`) signed with the deployment's own key, so the lab's trust anchor holds."""
    cfg = configmod.load(lab.config, env={})
    leaves = [c.leaf for c in pki.load_chains(cfg.tls_dir)]
    probe_leaves = {p.name: pki.leaves_for(p, cfg.tls_dir) for p in cfg.probes if p.chain is not None}
    key_dir = cfg.data_dir / "dnssec"
    out = zone.build_zone(cfg.domain, cfg.probes, leaves, pki.load_ca(cfg.tls_dir), [world.RECEIVER],
                          probe_leaves=probe_leaves, probe_addresses=cfg.probe_addresses)  # fmt: skip
    z = dns.zone.from_text(out.text, origin=cfg.domain + ".", relativize=False)
    if change is not None:
        change(z)
    if signed:
        sign.sign(z, zonekeys.load_or_create(key_dir, cfg.domain), now=now)
    return zone.zone_text(z)


def test_check_passes_on_the_lab(lab: world.World) -> None:
    code, out = check(lab, world.RESOLVER)
    assert code == 0, out
    assert failures(out) == [], out
    assert out.rstrip().endswith("all checks passed"), out
    # At a fresh test host under each probe, answered by the wildcards as a new test's is.
    host = r"check[0-9a-f]{12}\."
    assert re.search(rf"^ok    TLSA matches {host}do\.{re.escape(lab.zone)}: ", out, re.M), out
    assert re.search(rf"^ok    TLSA mismatches {host}wrong\.{re.escape(lab.zone)}: ", out, re.M), out
    dont = rf"^ok    TLSA _25\._tcp\.{host}dont\.{re.escape(lab.zone)}: none, authenticated denial \(AD\)$"
    assert re.search(dont, out, re.M), out
    assert re.search(rf"^ok    MX {host}do\.{re.escape(lab.zone)}: none: mail goes to the host's address", out, re.M)
    assert re.search(rf"^ok    MX {host}mx\.{re.escape(lab.zone)}: 10 mxhost\.", out, re.M), out
    assert re.search(rf"^ok    name {host}ta\.{re.escape(lab.zone)}: the certificate names it$", out, re.M), out
    # The shapes of issue 15's probes: ta-full's 2 1 0 with the leaf sent alone, one usage
    # matching in each mixed set, and ta-notls's DANE-TA record at a listener without STARTTLS.
    zone = re.escape(lab.zone)
    for line in (
        rf"ok    TLSA shape {host}ta-full\.{zone}: 2 1 0",
        rf"ok    chain {host}ta-full\.{zone}: the leaf alone, no CA \(as intended\)",
        rf"ok    TLSA matches {host}ta-full\.{zone}: served chain matches",
        rf"ok    TLSA shape {host}mixed-ee\.{zone}: 3 1 1, 2 1 1",
        rf"ok    TLSA mixed {host}mixed-ee\.{zone}: only the usage 3 records match \(as intended\)",
        rf"ok    TLSA mixed {host}mixed-ta\.{zone}: only the usage 2 records match \(as intended\)",
        rf"ok    TLSA shape {host}ta-notls\.{zone}: 2 1 1",
        rf"ok    SMTP {host}ta-notls\.{zone} \[127\.0\.0\.27\]:25: no STARTTLS \(as intended\)",
    ):
        assert re.search(f"^{line}$", out, re.M), (line, out)
    # mx-fallback: both MX hosts, the preferred one's TLSA mismatching what it serves.
    assert re.search(rf"^ok    MX {host}mx-fallback\.{re.escape(lab.zone)}: .*10 mxfail\.", out, re.M), out
    assert re.search(rf"^ok    TLSA mismatches mxfail\.{re.escape(lab.zone)}: ", out, re.M), out
    assert re.search(rf"^ok    TLSA matches mxok\.{re.escape(lab.zone)}: ", out, re.M), out
    # denial-bogus: the proof that its MX host has no TLSA fails validation, as it must.
    denial = rf"^ok    TLSA _25\._tcp\.mxdenial\.{re.escape(lab.zone)}: lookup fails validation \(SERVFAIL\)"
    assert re.search(denial, out, re.M), out


@contextlib.contextmanager
def unvalidated_dns(lab: world.World, zone_text: str) -> Iterator[None]:
    """Knot serving `zone_text` and Unbound with the lab's trust anchor in front of it,
    ready when it answers at all (an unsigned zone under a trust anchor never validates)."""
    base = lab.dir / "dns-unsigned"
    with contextlib.ExitStack() as stack:
        stack.enter_context(dnsservers.knot(lab.ns, base / "knot", world.ALT_AUTHORITATIVE, lab.zone, zone_text, False))
        conf = base / "unbound" / "unbound.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        (conf.parent / "anchor.ds").write_text("\n".join(lab.ds) + "\n")
        conf.write_text(dnsservers.UNBOUND_CONF.format(dir=conf.parent, address=world.ALT_RESOLVER, zone=lab.zone,
                                                       authoritative=world.ALT_AUTHORITATIVE))  # fmt: skip
        proc = lab.ns.popen(["unbound", "-d", "-c", str(conf)], conf.parent / "unbound.log")
        stack.callback(stop, proc)

        def answers() -> bool:
            try:
                dnsservers.query(lab.ns, world.ALT_RESOLVER, lab.zone, "SOA", timeout=1, tcp=True)
                return True
            except (OSError, TimeoutError, dns.exception.DNSException):
                return False

        wait_until(answers, 10, "unbound answering for the unsigned variant")
        yield


def test_check_fails_on_an_unsigned_zone(lab: world.World) -> None:
    # The parent still has our DS (Unbound's trust anchor): an unsigned zone under it is bogus.
    with unvalidated_dns(lab, variant(lab, signed=False)):
        code, out = check(lab, world.ALT_RESOLVER)
    assert code == 1, out
    [first, *_] = failures(out)
    assert first.startswith(f"FAIL  DNSSEC {lab.zone}: rcode SERVFAIL"), out
    assert "fix: sign the zone (`havedane zone --sign`)" in out


def test_check_reads_the_signatures_through_the_validating_resolver(lab: world.World) -> None:
    now = datetime.datetime.now(datetime.UTC)
    # Signed 27 days ago: still valid for 3 days, so Unbound validates and check warns.
    with unvalidated_dns(lab, variant(lab, signed=True, now=now - sign.LIFETIME + datetime.timedelta(days=3))):
        code, out = check(lab, world.ALT_RESOLVER)
    assert re.search(rf"^ok    DNSSEC {re.escape(lab.zone)}: ", out, re.M), out
    warn = rf"^WARN  signatures {re.escape(lab.zone)}: the first signature expires at [-0-9: ]+ UTC, in 3\.0 days$"
    assert re.search(warn, out, re.M), out
    # Signed 31 days ago: expired, Unbound answers SERVFAIL; with CD it hands the RRSIGs over.
    with unvalidated_dns(lab, variant(lab, signed=True, now=now - datetime.timedelta(days=31))):
        code, out = check(lab, world.ALT_RESOLVER)
    assert code == 1, out
    assert re.search(rf"^FAIL  DNSSEC {re.escape(lab.zone)}: rcode SERVFAIL", out, re.M), out
    expired = rf"^FAIL  signatures {re.escape(lab.zone)}: a signature expired at [-0-9: ]+ UTC: the zone is bogus"
    assert re.search(expired, out, re.M), out


def test_check_fails_when_do_tlsa_does_not_match_the_served_certificate(lab: world.World) -> None:
    owner = dns.name.from_text(f"*.do.{lab.zone}.")

    def mismatch_do(z: dns.zone.Zone) -> None:
        node = z.find_node(owner)
        rrset = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.TLSA)
        wrong = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.TLSA, ttl=rrset.ttl)
        for rd in rrset:
            wrong.add(rd.replace(cert=tlsa.mismatch(tlsa.TlsaRecord(rd.usage, rd.selector, rd.mtype, rd.cert)).data))
        node.replace_rdataset(wrong)

    with world.alternate_dns(lab, "mismatch", variant(lab, signed=True, change=mismatch_do), validation=True):
        code, out = check(lab, world.ALT_RESOLVER)
    assert code == 1, out
    [mismatch] = [line for line in failures(out) if line.startswith("FAIL  TLSA matches ")]
    assert re.fullmatch(rf"FAIL  TLSA matches check\w+\.do\.{re.escape(lab.zone)}: no record matches the served chain",
                        mismatch), out  # fmt: skip
    classic = [f".dont.{lab.zone}", f".wrong.{lab.zone}"]
    assert not [line for line in failures(out) if any(name in line for name in classic)], out
    assert "fix: republish TLSA from the certificates served (`havedane records`)" in out


def ns_moved_to(lab: world.World, address: str) -> str:
    """The zone `havedane zone --sign` wrote, with ns.<zone> (the name server of the
    child zones' delegations) at `address`, signed again with the deployment's key."""
    z = dns.zone.from_text(lab.zone_text, origin=lab.zone + ".", relativize=False)
    for node in z.nodes.values():
        for rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.DNSKEY):
            for covers in {r.covers for r in node.rdatasets if r.rdtype == rdtype}:
                node.delete_rdataset(dns.rdataclass.IN, rdtype, covers)
    a = dns.rdataset.from_text("IN", "A", zone.TTL, address)
    z.find_node(dns.name.from_text(f"ns.{lab.zone}.")).replace_rdataset(a)
    cfg = configmod.load(lab.config, env={})
    sign.sign(z, zonekeys.load_or_create(cfg.data_dir / "dnssec", cfg.domain))
    return zone.zone_text(z)


def test_check_names_a_child_zone_that_is_not_served(lab: world.World) -> None:
    # What `havedane zone --knot-conf` used to configure: Knot validating the unsigned
    # child zone on load. Knot 3.2 refuses to load it ("no keys for signing") and
    # answers SERVFAIL for every name in it; check must say so, not "publish MX".
    bogus, unsigned = f"bogus.{lab.zone}", f"unsigned.{lab.zone}"
    # Every child zone served as written; only `unsigned` validated on load (and refused).
    children = tuple(dnsservers.ServedZone(n, text, validation=n == unsigned) for n, text in lab.children.items())
    parent = ns_moved_to(lab, world.ALT_AUTHORITATIVE)
    with world.alternate_dns(lab, "refused", parent, True, children, ready=[lab.zone, bogus]):
        code, out = check(lab, world.ALT_RESOLVER)
    assert "no keys for signing" in (lab.dir / "dns-refused" / "knot" / "knotd.log").read_text()
    assert code == 1, out
    assert failures(out) == [f"FAIL  zone {unsigned}: not served: SOA query answered rcode SERVFAIL"], out
    assert "with Knot use `havedane zone --knot-conf`" in out
    assert f"ok    zone {bogus}: served (SOA answered)" in out
    assert f".{unsigned}" not in out.replace(f"zone {unsigned}", "") and "publish" not in out, out


def test_check_fails_when_the_receiver_is_down(lab: world.World) -> None:
    # Nothing listens on port 2599 of the probe addresses: the receiver is down there.
    code, out = check(lab, world.RESOLVER, "--smtp-port", "2599")
    assert code == 1, out
    smtp = [line for line in failures(out) if line.startswith("FAIL  SMTP ")]
    assert smtp and all("ConnectionRefusedError" in line for line in smtp), out
    assert re.search(rf"^FAIL  SMTP check\w+\.do\.{re.escape(lab.zone)} \[{world.RECEIVER}\]:2599", out, re.M), out
    assert "fix: start `havedane serve`" in out
    # DNS is still right, and the web app still answers.
    assert not [line for line in failures(out) if "DNSSEC" in line or "TLSA _25" in line], out
    assert "ok    web " in out

"""The complete zone (`havedane zone [--sign]`): its contents, its DNSSEC signatures
checked by dnspython and, independently, by ldns-verify-zone."""

from __future__ import annotations

import datetime
import re
import stat
import subprocess
import sys
from pathlib import Path

import dns.dnssec
import dns.dnssectypes
import dns.exception
import dns.name
import dns.node
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.NSEC
import dns.rdtypes.ANY.NSEC3
import dns.rrset
import dns.zone
import pytest
from cryptography import x509

from havedane import pki, probes, zonekeys
from havedane.dns import sign, zone
from helpers import make_setup, require

DOMAIN = "x.test"
ORIGIN = dns.name.from_text(DOMAIN)
ADDRESSES = ["192.0.2.25", "2001:db8::25"]
Keys = dict[dns.name.Name, dns.node.Node | dns.rdataset.Rdataset]  # what dns.dnssec.validate takes


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[x509.Certificate], x509.Certificate]:
    directory = make_setup(tmp_path_factory.mktemp("setup"), DOMAIN).parent / "tls"
    return [c.leaf for c in pki.load_chains(directory)], pki.load_ca(directory)


def build(
    certs: tuple[list[x509.Certificate], x509.Certificate], key_dir: Path, signed: bool, serial: int | None = 7
) -> zone.ZoneOutput:
    leaves, ca = certs
    keys = zonekeys.load_all(key_dir, zone.signed_zones(DOMAIN, probes.CLASSIC)) if signed else None
    return zone.build_zone(DOMAIN, probes.CLASSIC, leaves, ca, ADDRESSES, keys=keys, serial=serial)


def parse(text: str) -> dns.zone.Zone:
    return dns.zone.from_text(text, origin=ORIGIN, relativize=False)


def texts(z: dns.zone.Zone, name: str, rdtype: str) -> set[str]:
    return {r.to_text() for r in z.get_rdataset(name, rdtype) or []}


def nsec_types(nsec: dns.rdata.Rdata) -> set[int]:
    """The types in an NSEC type bitmap (RFC 4034 §4.1.2: window, then bits, high bit first)."""
    assert isinstance(nsec, dns.rdtypes.ANY.NSEC.NSEC | dns.rdtypes.ANY.NSEC3.NSEC3)
    return {
        window * 256 + i * 8 + bit
        for window, bits in nsec.windows
        for i, byte in enumerate(bits)
        for bit in range(8)
        if byte & (0x80 >> bit)
    }


def ldns_verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("ldns-verify-zone"), str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def validate_all(z: dns.zone.Zone) -> tuple[list[str], int]:
    """Check every authoritative RRset's RRSIG against the zone's DNSKEY: the RRsets
    that fail (as "name TYPE"), and how many were checked. NS at a zone cut is the
    child's and carries no signature in the parent (RFC 4035 §2.2)."""
    origin = z.origin
    assert origin is not None
    keys: Keys = {origin: z.find_rdataset(origin, "DNSKEY")}
    now = datetime.datetime.now(datetime.UTC).timestamp()
    failures, checked = [], 0
    for name, node in z.nodes.items():
        cut = name != origin and node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS) is not None
        for rds in node:
            if rds.rdtype == dns.rdatatype.RRSIG or (cut and rds.rdtype == dns.rdatatype.NS):
                continue
            label = f"{name} {dns.rdatatype.to_text(rds.rdtype)}"
            sigs = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, rds.rdtype)
            assert sigs is not None, f"{label} is not signed"
            for sig in sigs:
                # Valid from a little before now to 30 days ahead.
                assert sig.inception <= now - 3000 and sig.expiration >= now + 29 * 86400, label
            try:
                dns.dnssec.validate((name, rds), (name, sigs), keys, origin=origin, now=now)
            except dns.exception.ValidationFailure:
                failures.append(label)
            checked += 1
    return failures, checked


def test_unsigned_zone_is_complete(certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path) -> None:
    out = build(certs, tmp_path / "dnssec", signed=False, serial=2024010101)
    z = parse(out.text)  # from_text checks SOA and NS at the apex
    assert out.ds == []
    assert not (tmp_path / "dnssec").exists(), "an unsigned zone must not make keys"
    soa = z.find_rdataset(ORIGIN, "SOA")[0]
    assert (soa.mname.to_text(), soa.serial) == (f"ns.{DOMAIN}.", 2024010101)
    assert texts(z, f"{DOMAIN}.", "NS") == {f"ns.{DOMAIN}."}
    for name in (f"{DOMAIN}.", f"ns.{DOMAIN}."):
        assert texts(z, name, "A") == {"192.0.2.25"} and texts(z, name, "AAAA") == {"2001:db8::25"}
    leaves, ca = certs
    for rec in zone.records(DOMAIN, probes.CLASSIC, leaves, ca, ADDRESSES):
        assert rec.rdata in texts(z, rec.name, rec.type), rec
    types = {rds.rdtype for _, node in z.nodes.items() for rds in node}
    assert not types & {dns.rdatatype.DNSKEY, dns.rdatatype.RRSIG, dns.rdatatype.NSEC3, dns.rdatatype.NSEC3PARAM}


def test_zone_needs_an_address(certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path) -> None:
    leaves, ca = certs
    with pytest.raises(ValueError, match="--address"):
        zone.build_zone(DOMAIN, probes.CLASSIC, leaves, ca, [])


def test_signed_zone_validates_with_dnspython(
    certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path
) -> None:
    out = build(certs, tmp_path / "dnssec", signed=True)
    z = parse(out.text)
    [dnskey] = z.find_rdataset(ORIGIN, "DNSKEY")
    assert (dnskey.flags, dnskey.algorithm) == (257, dns.dnssectypes.Algorithm.ECDSAP256SHA256)
    failures, signed = validate_all(z)
    assert failures == [] and signed > 10
    # The DS printed for the parent is the digest of the zone's own key (RFC 4034 §5.1.4).
    ds = dns.dnssec.make_ds(ORIGIN, dnskey, "SHA256")
    assert out.ds == [f"{DOMAIN}. {zone.TTL} IN DS {ds.to_text()}"]


def test_nsec3_chain_covers_every_name_and_empty_non_terminal(
    certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path
) -> None:
    """NSEC3 with the parameters of RFC 9276 §3.1 (SHA-1, no salt, 0 extra iterations,
    no opt-out), and no NSEC: with NSEC a validating resolver answers new names from
    cached proofs (aggressive use, RFC 8198) and its queries never reach our server."""
    z = parse(build(certs, tmp_path / "dnssec", signed=True).text)
    [param] = z.find_rdataset(ORIGIN, "NSEC3PARAM")
    assert (param.algorithm, param.flags, param.iterations, param.salt) == (1, 0, 0, b"")
    assert not [name for name, node in z.nodes.items() if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC)]
    chain = {name: node for name, node in z.nodes.items() if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC3)}
    originals = [name for name in sorted(n for n, _ in z.nodes.items()) if name not in chain]
    # RFC 5155 §7.1: one NSEC3 per name with data and per empty non-terminal (<probe>.<domain>,
    # the parent of each probe's wildcard *.<probe>.<domain>, which holds every record of it).
    ents = {n.parent() for n in originals if n.is_wild()}
    assert dns.name.from_text(f"do.{DOMAIN}.") in ents
    expected = {*originals, *ents}
    hashed = {dns.name.from_text(dns.dnssec.nsec3_hash(n, None, 0, 1).lower(), ORIGIN): n for n in expected}
    assert set(chain) == set(hashed)
    # Each NSEC3 names the next hash in order, the last the first (RFC 5155 §3.1.7), and
    # lists exactly the types at its original name (§3.1.8; RRSIG where signed).
    owners = sorted(chain)
    for owner, following in zip(owners, [*owners[1:], owners[0]], strict=True):
        [nsec3] = chain[owner].find_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC3)
        assert (nsec3.algorithm, nsec3.flags, nsec3.iterations, nsec3.salt) == (1, 0, 0, b"")
        assert nsec3.next_name(ORIGIN) == following
        node = z.get_node(hashed[owner])
        assert nsec_types(nsec3) == ({rds.rdtype for rds in node} if node else set()), hashed[owner]
    assert z.get_node(f"do.{DOMAIN}.") is None, "an empty non-terminal gets no records of its own"


def test_signing_again_replaces_the_old_chain(
    certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path
) -> None:
    """The lab re-signs a changed zone: nothing of the first signing may remain (an
    NSEC3 of a name that is gone would break the chain)."""
    z = parse(build(certs, tmp_path / "dnssec", signed=True).text)
    gone = dns.name.from_text(f"wrong.{DOMAIN}.")
    for name in [n for n, _ in z.nodes.items() if n.is_subdomain(gone)]:
        del z.nodes[name]
    sign.sign(z, zonekeys.load_or_create(tmp_path / "dnssec", DOMAIN))
    path = tmp_path / "zone"
    path.write_text(zone.zone_text(z))
    proc = ldns_verify(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nsec3 = [n for n, node in z.nodes.items() if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC3)]
    assert len(nsec3) == len(z.nodes) - len(nsec3) + 2  # + do and dont, the empty non-terminals left
    assert validate_all(z)[0] == []


def test_a_test_hosts_tlsa_is_synthesised_from_the_signed_wildcard(
    certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path
) -> None:
    """Every test's `_25._tcp.<alias>.do.<domain> TLSA` is answered from `*.do.<domain>`
    (RFC 4592 §4.1): its RRSIG counts the labels without the `*` (RFC 4034 §3.1.3), so a
    validator accepts the expanded owner name (RFC 4035 §5.3.4)."""
    z = parse(build(certs, tmp_path / "dnssec", signed=True).text)
    wildcard = dns.name.from_text(f"*.do.{DOMAIN}.")
    tlsa_rrset = z.find_rdataset(wildcard, "TLSA")
    sigs = z.find_rdataset(wildcard, "RRSIG", "TLSA")
    assert [sig.labels for sig in sigs] == [3]
    expanded = dns.name.from_text(f"_25._tcp.k3j4h5g6f7d8s9a0.do.{DOMAIN}.")
    keys: Keys = {ORIGIN: z.find_rdataset(ORIGIN, "DNSKEY")}
    dns.dnssec.validate((expanded, tlsa_rrset), (expanded, sigs), keys, origin=ORIGIN)  # raises if not
    # Not under another probe: the labels field binds the signature to *.do.<domain>.
    elsewhere = dns.name.from_text(f"_25._tcp.k3j4h5g6f7d8s9a0.wrong.{DOMAIN}.")
    with pytest.raises(dns.exception.ValidationFailure):
        dns.dnssec.validate((elsewhere, tlsa_rrset), (elsewhere, sigs), keys, origin=ORIGIN)


def test_dnskey_ttl_is_short(certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path) -> None:
    """A fresh test should see its resolver fetch the DNSKEY (positive evidence that it
    validates): the key expires from resolvers' caches within seconds."""
    z = parse(build(certs, tmp_path / "dnssec", signed=True).text)
    assert z.find_rdataset(ORIGIN, "DNSKEY").ttl == sign.DNSKEY_TTL <= 60
    [sig] = z.find_rdataset(ORIGIN, "RRSIG", "DNSKEY")
    assert sig.original_ttl == sign.DNSKEY_TTL


def test_ldns_verify_zone_accepts_the_signed_zone(
    certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path
) -> None:
    path = tmp_path / "zone"
    path.write_text(build(certs, tmp_path / "dnssec", signed=True).text)
    proc = ldns_verify(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Zone is verified and complete" in proc.stdout


def test_a_corrupted_signature_is_caught(
    certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path
) -> None:
    """Both checkers must fail on a zone with one bad bit: else they prove nothing above."""
    z = parse(build(certs, tmp_path / "dnssec", signed=True).text)
    owner = dns.name.from_text(f"*.do.{DOMAIN}.")
    node = z.find_node(owner)
    sigs = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.TLSA)
    [sig] = sigs
    bad = dns.rdataset.from_rdata(sigs.ttl, sig.replace(signature=sig.signature[:-1] + bytes([sig.signature[-1] ^ 1])))
    node.replace_rdataset(bad)
    keys: Keys = {ORIGIN: z.find_rdataset(ORIGIN, "DNSKEY")}
    with pytest.raises(dns.exception.ValidationFailure):
        dns.dnssec.validate(
            (owner, node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.TLSA)), (owner, bad), keys, origin=ORIGIN
        )
    path = tmp_path / "zone"
    path.write_text(zone.zone_text(z))
    assert ldns_verify(path).returncode != 0


def test_a_broken_nsec3_chain_is_caught(certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path) -> None:
    """ldns-verify-zone checks the NSEC3 chain too: one NSEC3 (and its RRSIG) gone, and
    a name is neither proven to exist nor covered (RFC 5155 §7.1)."""
    z = parse(build(certs, tmp_path / "dnssec", signed=True).text)
    hashed = dns.dnssec.nsec3_hash(f"*.do.{DOMAIN}.", None, 0, 1).lower()
    del z.nodes[dns.name.from_text(hashed, ORIGIN)]
    path = tmp_path / "zone"
    path.write_text(zone.zone_text(z))
    proc = ldns_verify(path)
    assert proc.returncode != 0, proc.stdout + proc.stderr


def test_key_is_kept_private_and_reused(certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path) -> None:
    key_dir = tmp_path / "dnssec"
    first = build(certs, key_dir, signed=True, serial=1)
    [key_file] = key_dir.iterdir()
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = build(certs, key_dir, signed=True, serial=2)
    assert second.ds == first.ds, "the DS at the parent must stay valid from run to run"
    assert list(key_dir.iterdir()) == [key_file]
    assert parse(second.text).find_rdataset(ORIGIN, "SOA")[0].serial == 2


def test_serial_defaults_to_unix_time(certs: tuple[list[x509.Certificate], x509.Certificate], tmp_path: Path) -> None:
    before = int(datetime.datetime.now(datetime.UTC).timestamp())
    out = build(certs, tmp_path, signed=False, serial=None)
    assert parse(out.text).find_rdataset(ORIGIN, "SOA")[0].serial >= before


def test_an_unusable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    key_dir = tmp_path / "dnssec"
    key_dir.mkdir()
    zonekeys.key_path(key_dir, DOMAIN).write_text("not a key\n")
    with pytest.raises(sign.SigningKeyError, match="not an unencrypted PEM private key"):
        zonekeys.load_or_create(key_dir, DOMAIN)
    pki.write_key(zonekeys.key_path(key_dir, DOMAIN), pki.new_key("rsa"))
    with pytest.raises(sign.SigningKeyError, match="ECDSA P-256"):
        zonekeys.load_or_create(key_dir, DOMAIN)


def test_havedane_zone_sign_cli(tmp_path: Path) -> None:
    """The command an operator runs: zone file out, DS on standard error, and the
    file passes ldns-verify-zone."""
    require("ldns-verify-zone")
    config = make_setup(tmp_path, DOMAIN)
    out = tmp_path / "zone"
    argv = [sys.executable, "-m", "havedane", "zone", "--config", str(config), "--sign"]
    proc = subprocess.run(
        [*argv, "--address", "192.0.2.25", "--out", str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    [ds] = [line for line in proc.stderr.splitlines() if " DS " in line]
    assert ds.startswith(f"{DOMAIN}. ") and " 13 2 " in ds
    assert (tmp_path / "dnssec").is_dir()
    check = ldns_verify(out)
    assert check.returncode == 0, check.stdout + check.stderr


def test_matrix_probes_get_their_zone_cuts(tmp_path: Path) -> None:
    """bogus: a signed child zone (DS in the parent) whose TLSA alone fails validation;
    unsigned: a child zone delegated without DS. Everything else stays in the parent."""
    tls_dir = make_setup(tmp_path / "hd", DOMAIN).parent / "tls"  # what `havedane init` made
    enabled = probes.enabled(None, matrix=True)
    out = zone.build_zone(
        DOMAIN,
        enabled,
        [c.leaf for c in pki.load_chains(tls_dir)],
        pki.load_ca(tls_dir),
        ADDRESSES,
        keys=zonekeys.load_all(tmp_path / "dnssec", zone.signed_zones(DOMAIN, enabled)),
        probe_leaves={p.name: pki.leaves_for(p, tls_dir) for p in enabled if p.chain is not None},
        probe_addresses={"notls": "192.0.2.8", "unusable-notls": "192.0.2.9", "ta-notls": "192.0.2.10"},
    )
    bogus, unsigned, denial = f"bogus.{DOMAIN}", f"unsigned.{DOMAIN}", f"mxdenial.{DOMAIN}"
    assert set(out.children) == {bogus, unsigned, denial}
    parent = parse(out.text)
    for cut in (bogus, unsigned, denial):
        assert texts(parent, f"{cut}.", "NS") == {f"ns.{DOMAIN}."}
        assert [
            n for n, _ in parent.nodes.items() if n.is_subdomain(dns.name.from_text(cut)) and n.to_text() != f"{cut}."
        ] == []
    assert texts(parent, f"{unsigned}.", "DS") == set()
    assert validate_all(parent)[0] == []
    assert texts(parent, f"*.notls.{DOMAIN}.", "A") == {"192.0.2.8"}
    # mx: every test's host has the one MX host, which has the address and the TLSA.
    assert texts(parent, f"*.mx.{DOMAIN}.", "MX") == {f"10 mxhost.{DOMAIN}."}
    assert texts(parent, f"mxhost.{DOMAIN}.", "A") | texts(parent, f"mxhost.{DOMAIN}.", "AAAA") == set(ADDRESSES)
    assert parent.get_rdataset(f"_25._tcp.mxhost.{DOMAIN}.", "TLSA") is not None

    child = dns.zone.from_text(out.children[bogus], origin=f"{bogus}.", relativize=False)
    [dnskey] = child.find_rdataset(f"{bogus}.", "DNSKEY")
    assert texts(parent, f"{bogus}.", "DS") == {dns.dnssec.make_ds(f"{bogus}.", dnskey, "SHA256").to_text()}
    assert child.get_rdataset(f"*.{bogus}.", "TLSA") is not None
    assert validate_all(child)[0] == [f"*.{bogus}. TLSA"]

    # mx-fallback: the preferred MX host's TLSA match nothing served; the next one's are right.
    assert texts(parent, f"*.mx-fallback.{DOMAIN}.", "MX") == {f"10 mxfail.{DOMAIN}.", f"20 mxok.{DOMAIN}."}
    good, bad = (texts(parent, f"_25._tcp.mx{h}.{DOMAIN}.", "TLSA") for h in ("ok", "fail"))
    assert good == texts(parent, f"_25._tcp.mxhost.{DOMAIN}.", "TLSA") and len(bad) == len(good)
    assert bad.isdisjoint(good)
    for h in ("ok", "fail"):
        assert texts(parent, f"mx{h}.{DOMAIN}.", "A") | texts(parent, f"mx{h}.{DOMAIN}.", "AAAA") == set(ADDRESSES)
    # denial-bogus: the test hosts' MX (in the validly signed parent) names a child zone at
    # the MX host; there, _25._tcp.<MX host> has no TLSA (a placeholder TXT), and only the
    # signature of the NSEC3 proving that fails (RFC 5155 §7.2.3: a NODATA proof).
    assert texts(parent, f"*.denial-bogus.{DOMAIN}.", "MX") == {f"10 {denial}."}
    denied = dns.zone.from_text(out.children[denial], origin=f"{denial}.", relativize=False)
    [dnskey] = denied.find_rdataset(f"{denial}.", "DNSKEY")
    assert texts(parent, f"{denial}.", "DS") == {dns.dnssec.make_ds(f"{denial}.", dnskey, "SHA256").to_text()}
    assert texts(denied, f"{denial}.", "A") | texts(denied, f"{denial}.", "AAAA") == set(ADDRESSES)
    owner = dns.name.from_text(f"_25._tcp.{denial}.")
    assert denied.get_rdataset(owner, "TLSA") is None and denied.get_rdataset(owner, "TXT") is not None
    hashed = dns.dnssec.nsec3_hash(owner, None, 0, "SHA1").lower()
    assert validate_all(denied)[0] == [f"{hashed}.{denial}. NSEC3"]

    plain = dns.zone.from_text(out.children[unsigned], origin=f"{unsigned}.", relativize=False)
    assert plain.get_rdataset(f"*.{unsigned}.", "TLSA") is not None
    assert {rds.rdtype for _, node in plain.nodes.items() for rds in node}.isdisjoint(
        {dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY}
    )

    for text, valid in ((out.text, True), (out.children[bogus], False), (out.children[denial], False)):
        path = tmp_path / "checked.zone"
        path.write_text(text)
        assert (ldns_verify(path).returncode == 0) is valid


def test_knot_validates_only_the_zones_whose_signatures_are_all_valid(tmp_path: Path) -> None:
    """Knot 3.2 refuses to load a zone it validates that has no keys or a broken
    signature (and answers SERVFAIL for it): only the signed base zone is validated."""
    tls_dir = make_setup(tmp_path / "hd", DOMAIN).parent / "tls"  # what `havedane init` made
    enabled = probes.enabled(None, matrix=True)
    for signed, checked in ((True, {DOMAIN}), (False, set())):
        keys = zonekeys.load_all(tmp_path / "dnssec", zone.signed_zones(DOMAIN, enabled)) if signed else None
        out = zone.build_zone(
            DOMAIN, enabled, [c.leaf for c in pki.load_chains(tls_dir)], pki.load_ca(tls_dir), ADDRESSES, keys=keys,
            probe_leaves={p.name: pki.leaves_for(p, tls_dir) for p in enabled if p.chain is not None},
        )  # fmt: skip
        files = {DOMAIN: f"{tmp_path}/x.zone", **{name: f"{tmp_path}/{name}.zone" for name in out.children}}
        conf = zone.knot_conf(files, out.validated)
        on = set(re.findall(r"- domain: (\S+)\n.*\n    dnssec-validation: on\n", conf))
        assert on == checked, conf
        assert conf.count("dnssec-validation: off") == len(files) - len(checked), conf

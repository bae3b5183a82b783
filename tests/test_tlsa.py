"""TLSA digests against an independent implementation (Debian's hash-slinger `tlsa`),
and the record output of `havedane records` (RFC 6698 §2.1, RFC 7671 §5.1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dns.zone
import pytest
from cryptography import x509

from havedane import pki, probes
from havedane.dns import tlsa, zone
from helpers import require

DOMAIN = "x.test"


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    pki.create(directory, DOMAIN)
    return directory


def hash_slinger(cert: Path, usage: int, selector: int = 1, mtype: int = 1, host: str = f"do.{DOMAIN}") -> str:
    """`tlsa --create` from a certificate file: with --certificate it reads the file and
    makes no DNS or network request (checked with `unshare -n`)."""
    argv = [require("tlsa"), "--create", "--certificate", str(cert), "--usage", str(usage)]
    argv += ["--selector", str(selector), "--mtype", str(mtype), "--port", "25", host]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    # "_25._tcp.do.x.test. IN TLSA 3 1 1 <hex>"
    [line] = [line for line in out.splitlines() if " IN TLSA " in line]
    owner, rdata = line.split(" IN TLSA ")
    assert owner == f"_25._tcp.{host}."
    return rdata.strip().lower()


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.parametrize("kind", pki.LEAF_KINDS)
def test_dane_ee_matches_hash_slinger(tls_dir: Path, kind: str) -> None:
    leaf = tls_dir / f"leaf-{kind}.pem"
    assert tlsa.record(tlsa.DANE_EE, cert(leaf)).rdata() == hash_slinger(leaf, 3)


def test_dane_ta_matches_hash_slinger(tls_dir: Path) -> None:
    ca = tls_dir / "ca.pem"
    assert tlsa.record(tlsa.DANE_TA, cert(ca)).rdata() == hash_slinger(ca, 2)


@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 2), (0, 2)])
def test_other_selectors_and_digests_match_hash_slinger(tls_dir: Path, selector: int, mtype: int) -> None:
    leaf = tls_dir / "leaf-ecdsa.pem"
    ours = tlsa.record(tlsa.DANE_EE, cert(leaf), selector=selector, mtype=mtype).rdata()
    assert ours == hash_slinger(leaf, 3, selector, mtype)


def test_for_probe_shapes(tls_dir: Path) -> None:
    leaves = [cert(tls_dir / f"leaf-{k}.pem") for k in pki.LEAF_KINDS]
    ca = cert(tls_dir / "ca.pem")
    chains = [[leaf, ca] for leaf in leaves]
    do, dont, wrong = (tlsa.for_probe(probes.CATALOGUE[n], leaves, ca) for n in ("do", "dont", "wrong"))
    assert [(r.usage, r.selector, r.mtype) for r in do] == [(3, 1, 1), (3, 1, 1), (2, 1, 1)]
    assert dont == []
    # Same shape, digests of nothing served, and the same every run.
    assert [(r.usage, r.selector, r.mtype) for r in wrong] == [(r.usage, r.selector, r.mtype) for r in do]
    assert wrong == tlsa.for_probe(probes.CATALOGUE["wrong"], leaves, ca)
    assert all(tlsa.matches(do, chain) for chain in chains)
    assert not any(tlsa.matches(wrong, chain) for chain in chains)
    # DANE-TA alone matches above the leaf, never the leaf itself (RFC 7672 §3.1.1, §3.1.2).
    ta = [r for r in do if r.usage == tlsa.DANE_TA]
    assert tlsa.matches(ta, chains[0]) and not tlsa.matches(ta, chains[0][:1])


def test_records_parse_back(tls_dir: Path) -> None:
    leaves = [cert(tls_dir / f"leaf-{k}.pem") for k in pki.LEAF_KINDS]
    ca = cert(tls_dir / "ca.pem")
    recs = zone.records(DOMAIN, probes.CLASSIC, leaves, ca, ["192.0.2.25", "2001:db8::25"])
    parsed = dns.zone.from_text(zone.format_zone(recs), origin=f"{DOMAIN}.", relativize=False, check_origin=False)
    for probe in probes.CLASSIC:
        # Once for every test's host: the wildcard *.<probe>.<domain> (RFC 4592).
        host = probe.wildcard(DOMAIN) + "."
        assert {r.to_text() for r in parsed.find_rdataset(host, "A")} == {"192.0.2.25"}
        assert {r.to_text() for r in parsed.find_rdataset(host, "AAAA")} == {"2001:db8::25"}
        # No MX: a sender uses the host's own address (RFC 5321 §5.1), and looks up TLSA
        # at the host itself (RFC 7672 §2.2.1), answered from the wildcard's TLSA RRset.
        assert parsed.get_rdataset(host, "MX") is None
        found = parsed.get_rdataset(host, "TLSA")
        expected = {r.rdata() for r in tlsa.for_probe(probe, leaves, ca)}
        assert {r.to_text() for r in found or []} == expected
    as_json = json.loads(zone.format_json(recs))
    assert [(r["name"], r["type"], r["data"], r["ttl"]) for r in as_json] == [
        (r.name, r.type, r.rdata, r.ttl) for r in recs
    ]


def havedane(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "havedane", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_havedane_records_agree_with_hash_slinger(tmp_path: Path) -> None:
    """The records an operator copies into DNS, checked against hash-slinger run on
    the certificates `havedane init` wrote."""
    require("tlsa")
    havedane("init", "--domain", DOMAIN, "--dir", str(tmp_path))
    config, tls = str(tmp_path / "havedane.toml"), tmp_path / "tls"
    text = havedane("records", "--config", config, "--format", "zone", "--address", "192.0.2.25")
    as_json = json.loads(havedane("records", "--config", config, "--format", "json", "--address", "192.0.2.25"))
    parsed = dns.zone.from_text(text, origin=f"{DOMAIN}.", relativize=False, check_origin=False)

    def tlsa_at(host: str) -> set[str]:
        rdataset = parsed.get_rdataset(f"*.{host}.", "TLSA")
        return {r.to_text() for r in rdataset or []}

    for host in (f"do.{DOMAIN}", f"wrong.{DOMAIN}"):
        json_set = {r["data"] for r in as_json if r["name"] == f"*.{host}." and r["type"] == "TLSA"}
        assert json_set == tlsa_at(host)
    served = {hash_slinger(tls / f"leaf-{k}.pem", 3) for k in pki.LEAF_KINDS} | {hash_slinger(tls / "ca.pem", 2)}
    assert tlsa_at(f"do.{DOMAIN}") == served
    wrong = tlsa_at(f"wrong.{DOMAIN}")
    assert len(wrong) == len(served) and not wrong & served
    assert tlsa_at(f"dont.{DOMAIN}") == set()

"""The catalogue's names: every test's host under each probe, and reading them back."""

from __future__ import annotations

from pathlib import Path

import pytest

from havedane import check, pki, probes
from havedane.dns import queries

DOMAIN = "x.test"
ALL = tuple(probes.CATALOGUE.values())
DO, MX, EE = probes.CATALOGUE["do"], probes.CATALOGUE["mx"], probes.CATALOGUE["ee"]


def test_a_tests_names_at_a_probe() -> None:
    assert DO.address("abc123", DOMAIN) == "test@abc123.do.x.test"
    assert (DO.host(DOMAIN, "abc123"), DO.tls_host(DOMAIN, "abc123")) == ("abc123.do.x.test", "abc123.do.x.test")
    assert (DO.wildcard(DOMAIN), DO.tls_name(DOMAIN), DO.tlsa_owner(DOMAIN)) == ("*.do.x.test",) * 3
    # mx: the test's mail domain carries the alias, its MX host (TLSA, SNI) does not.
    assert (MX.host(DOMAIN, "abc123"), MX.tls_host(DOMAIN, "abc123")) == ("abc123.mx.x.test", "mxhost.x.test")
    assert (MX.tls_name(DOMAIN), MX.tlsa_owner(DOMAIN)) == ("mxhost.x.test", "_25._tcp.mxhost.x.test")
    assert [p.name for p in ALL if not p.sni_names_test] == [
        "unusable-notls",
        "ta-notls",
        "notls",
        "mx",
        "denial-bogus",
        "mx-fallback",
    ]


@pytest.mark.parametrize("probe", ALL, ids=lambda p: p.name)
def test_every_tests_host_names_its_probe_and_alias(probe: probes.Probe) -> None:
    host = probe.host(DOMAIN, "k3j4h5g6f7d8s9a0")
    assert probes.probe_for_host(ALL, DOMAIN, host) == probes.Named(probe, "k3j4h5g6f7d8s9a0")


@pytest.mark.parametrize(
    "host",
    ["K3J4H5G6F7D8S9A0.DO.X.TEST", "k3j4h5g6f7d8s9a0.do.x.test.", "K3j4h5g6f7d8s9a0.Do.X.Test."],
)
def test_host_names_are_read_in_any_case_with_a_final_dot(host: str) -> None:
    """DNS names compare case-insensitively (RFC 4343); an absolute name ends in a dot."""
    assert probes.probe_for_host(ALL, DOMAIN, host) == probes.Named(DO, "k3j4h5g6f7d8s9a0")
    assert probes.probe_for_host(ALL, "X.Test.", host) == probes.Named(DO, "k3j4h5g6f7d8s9a0")


def test_the_mx_host_names_its_probe_and_no_test() -> None:
    assert probes.probe_for_host(ALL, DOMAIN, "MXHOST.x.test.") == probes.Named(MX, None)


def test_both_mx_hosts_of_mx_fallback_name_it() -> None:
    """The receiver tells the MX host a session came in on by SNI: both name the probe."""
    fallback = probes.CATALOGUE["mx-fallback"]
    assert fallback.mx_records(DOMAIN) == [(10, "mxfail.x.test"), (20, "mxok.x.test")]
    assert fallback.tls_host(DOMAIN, "abc") == "mxok.x.test"  # where a DANE sender delivers
    for host in ("mxfail.x.test", "MXOK.x.test."):
        assert probes.probe_for_host(ALL, DOMAIN, host) == probes.Named(fallback, None)


@pytest.mark.parametrize(
    "host",
    [
        "do.x.test",  # the probe's own name: no test's host
        "x.test",
        "",
        ".",
        "abc.do.x.test.evil",  # another domain
        "abc.do.y.test",
        "a.b.do.x.test",  # two labels below the probe
        "abc.nosuchprobe.x.test",
        "abc.xdo.x.test",
        "a_b.do.x.test",  # not an alias: [a-z0-9] only
        "a-b.do.x.test",
        "*.do.x.test",
        ".do.x.test",
        "ab\u00e9.do.x.test",
        "\u0661\u0662.do.x.test",  # digits, but not ASCII ones
        "a" * 64 + ".do.x.test",  # longer than a DNS label
        "abc.mxhost.x.test",
    ],
)
def test_what_is_no_tests_host(host: str) -> None:
    assert probes.probe_for_host(ALL, DOMAIN, host) is None


def test_only_the_probes_served_are_read() -> None:
    assert probes.probe_for_host(probes.CLASSIC, DOMAIN, "abc.ee.x.test") is None
    assert probes.probe_for_host(probes.CLASSIC, DOMAIN, "abc.wrong.x.test") == probes.Named(
        probes.CATALOGUE["wrong"], "abc"
    )


def test_dns_queries_are_tied_by_the_alias_in_a_tests_names() -> None:
    """What the authoritative server sees of a test (dns.queries, for the diagnosis): the TLSA
    lookup and its query-name-minimisation steps (RFC 9156) carry the alias; the probe's
    own name and the fixed MX host's TLSA do not."""
    hosts = queries.probe_hosts(DOMAIN, ALL)
    for name in ("_25._tcp.abc123.do.x.test", "_tcp.abc123.do.x.test", "ABC123.do.x.test.", "abc123.mx.x.test"):
        assert queries.alias_of(name, hosts) == "abc123", name
    for name in ("do.x.test", "x.test", "_25._tcp.mxhost.x.test", "mxhost.x.test", "_25._tcp.do.x.test"):
        assert queries.alias_of(name, hosts) is None, name


def test_check_reads_a_certificates_names_as_a_sender_does(tmp_path: Path) -> None:
    """`havedane check` tells whether the leaf names a test's host (the DANE-TA name check,
    RFC 7672 §3.2.2): a wildcard covers one label (RFC 6125 §6.4.3), any case."""
    pki.create(tmp_path, DOMAIN)
    [leaf, _] = [c.leaf for c in pki.load_chains(tmp_path)]
    assert check.names_host(leaf, "abc123.ta.x.test") and check.names_host(leaf, "ABC123.TA.X.TEST.")
    assert check.names_host(leaf, "mxhost.x.test")
    for host in ("ta.x.test", "a.b.ta.x.test", "abc.ee.x.test", "abc.ta-badname.x.test", "abc.ta.y.test"):
        assert not check.names_host(leaf, host), host

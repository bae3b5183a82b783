"""Query names of the per-test host names (`<local>@<alias>.<probe>.<domain>`, TLSA at
`_25._tcp.<alias>.<probe>.<domain>`): the alias they carry and the probe whose TLSA records they ask for."""

from __future__ import annotations

import pytest

from havedane import probes
from havedane.dns.queries import alias_of, probe_hosts, probe_names, probe_of

DOMAIN = "x.test"
ENABLED = tuple(probes.CATALOGUE.values())
HOSTS = probe_hosts(DOMAIN, ENABLED)
NAMED = probe_names(DOMAIN, ENABLED)
ALIAS = "k7q2m9x4c1v8b3n6"


@pytest.mark.parametrize(
    ("qname", "alias"),
    [
        (f"{ALIAS}.do.x.test", ALIAS),  # the host of <local>@<alias>.do.x.test: MX, A, AAAA
        (f"_25._tcp.{ALIAS}.wrong.x.test", ALIAS),  # its TLSA records
        (f"_25._TcP.{ALIAS.upper()}.WrOnG.x.TeSt.", ALIAS),  # 0x20 case randomisation by resolvers
        (f"_tcp.{ALIAS}.ta-badname.x.test", ALIAS),  # a minimisation step under a hyphenated probe (RFC 9156)
        (f"_25._tcp.{ALIAS}.unusable-notls.x.test", ALIAS),  # the longest host matches, not `notls`
        (f"{ALIAS}.do.x.test.x.test", None),  # under no probe host of the zone
        (f"-{ALIAS}.do.x.test", None),
    ],
)
def test_the_alias_of_a_per_test_name(qname: str, alias: str | None) -> None:
    assert alias_of(qname, HOSTS) == alias


@pytest.mark.parametrize(
    ("qname", "probe"),
    [
        (f"_25._tcp.{ALIAS}.do.x.test", "do"),
        (f"_25._tcp.{ALIAS}.WRONG.x.test.", "wrong"),
        (f"_25._tcp.{ALIAS}.unusable-notls.x.test", "unusable-notls"),
        ("_25._tcp.mxhost.x.test", "mx"),  # the `mx` probe's fixed TLS host
        (f"_25._tcp.{ALIAS}.mxhost.x.test", "mx"),
        ("_25._tcp.do.x.test", "do"),  # the probe host's own name (before per-test names)
        (f"_tcp.{ALIAS}.do.x.test", None),  # a minimisation step, not the TLSA name
        (f"_25._udp.{ALIAS}.do.x.test", None),
        (f"_25._tcp.a.{ALIAS}.do.x.test", None),
        (f"_25._tcp.{ALIAS}.nosuch.x.test", None),
    ],
)
def test_the_probe_whose_tlsa_records_a_name_asks_for(qname: str, probe: str | None) -> None:
    assert probe_of(qname, NAMED) == probe

"""The probe catalogue: the one place that knows what each probe is.

DNS output, the receiver, the verdict and the page all read these values; no
other module names a probe. Adding a probe means adding a row here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Expect(enum.StrEnum):
    """What a DANE-validating sender must do with mail for a probe."""

    DELIVER = "deliver"
    REFUSE = "refuse"  # connect, do TLS, then leave without MAIL (RFC 7672 §2.2)
    NEVER_CONNECT = "never-connect"


class Tlsa(enum.StrEnum):
    """The shape of the TLSA RRset published at _25._tcp.<probe host>."""

    MATCH = "match"  # 3 1 1 of each served leaf + 2 1 1 of the CA
    NONE = "none"  # no TLSA: authenticated denial of existence
    MISMATCH = "mismatch"  # same shape as MATCH, digests that match nothing served


@dataclass(frozen=True)
class Probe:
    name: str
    expect: Expect
    tlsa: Tlsa
    tests: str  # one line: what this probe tests
    proves_pass: str  # what the expected behaviour proves
    proves_fail: str  # what the other behaviour proves
    rfc: str
    starttls: bool = True
    # The classic probes decide the headline verdict; the conformance matrix adds rows.
    classic: bool = True

    def host(self, domain: str) -> str:
        return f"{self.name}.{domain}"

    def address(self, alias: str, domain: str) -> str:
        return f"{alias}@{self.host(domain)}"


CLASSIC: tuple[Probe, ...] = (
    Probe(
        name="do",
        expect=Expect.DELIVER,
        tlsa=Tlsa.MATCH,
        tests="Signed TLSA records that match the certificate we serve.",
        proves_pass="Your server reached a DANE-protected domain and delivered over TLS.",
        proves_fail="Your server could not deliver to a domain with correct DANE records.",
        rfc="RFC 7672 §2.2, §3.1",
    ),
    Probe(
        name="dont",
        expect=Expect.DELIVER,
        tlsa=Tlsa.NONE,
        tests="A signed domain without TLSA records.",
        proves_pass="Your server still delivers opportunistically where no TLSA is published.",
        proves_fail="Your server did not deliver to an ordinary domain without DANE.",
        rfc="RFC 7672 §2.2",
    ),
    Probe(
        name="wrong",
        expect=Expect.REFUSE,
        tlsa=Tlsa.MISMATCH,
        tests="Signed TLSA records that do not match the certificate we serve.",
        proves_pass="Your server checked our certificate against the TLSA records and refused to send.",
        proves_fail="Your server sent mail to a server whose certificate does not match the domain's TLSA "
        "records: it does not validate DANE, and an attacker on the path could read that mail.",
        rfc="RFC 7672 §2.2, §3.1",
    ),
)

CATALOGUE: dict[str, Probe] = {p.name: p for p in CLASSIC}


def enabled(names: list[str] | None = None) -> tuple[Probe, ...]:
    """The probes a deployment serves, in catalogue order."""
    if names is None:
        return CLASSIC
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown:
        raise KeyError(", ".join(unknown))
    return tuple(p for p in CATALOGUE.values() if p.name in names)


def probe_for_host(probes: tuple[Probe, ...], domain: str, host: str) -> Probe | None:
    host = host.lower().rstrip(".")
    for p in probes:
        if p.host(domain) == host:
            return p
    return None

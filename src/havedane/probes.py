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
    """The shape of the TLSA RRset published at _25._tcp.<TLS host> (RFC 7671, RFC 7672 §3.1)."""

    MATCH = "match"  # 3 1 1 of each served leaf + 2 1 1 of the CA
    NONE = "none"  # no TLSA: authenticated denial of existence
    MISMATCH = "mismatch"  # same shape as MATCH, digests that match nothing served
    EE = "ee"  # only 3 1 1 (DANE-EE) of the leaf served for this probe
    TA = "ta"  # only 2 1 1 (DANE-TA) of the genuine CA
    UNUSABLE = "unusable"  # only usages 0 and 1 (PKIX-TA, PKIX-EE): unusable for SMTP (RFC 7672 §3.1.3)


class Zone(enum.StrEnum):
    """Where the probe's names live, and how that part of the DNS is signed."""

    PARENT = "parent"  # in the signed base zone
    BOGUS = "bogus"  # a child zone with DS in the parent whose TLSA signature is broken
    UNSIGNED = "unsigned"  # a child zone delegated without DS: provably insecure


class Chain(enum.StrEnum):
    """A certificate chain served only to senders that name the probe in SNI."""

    EE = "ee"  # self-signed, expired, naming another host: fine for DANE-EE (RFC 7672 §3.1.1)
    BADNAME = "badname"  # issued by our CA, naming another host
    EXPIRED = "expired"  # issued by our CA, expired
    ROGUE = "rogue"  # issued by an unrelated CA; chain = leaf + that CA + our CA


@dataclass(frozen=True)
class Probe:
    name: str
    expect: Expect
    tlsa: Tlsa
    tests: str  # one line: what this probe tests
    proves_pass: str  # what the expected behaviour proves
    proves_fail: str  # what the other behaviour proves (for the matrix: the consequence)
    rfc: str
    starttls: bool = True  # False: needs a listener address of its own ([probes] addresses)
    # The classic probes decide the headline verdict; the conformance matrix adds rows.
    classic: bool = True
    chain: Chain | None = None  # None: the default chain
    mx: str | None = None  # label of a separate MX host carrying the TLSA (RFC 7672 §2.2.2)
    zone: Zone = Zone.PARENT
    # A probe whose delivery shows the sender can do what this one needs (e.g. DNSSEC
    # lookups of TLSA): without it a missing delivery proves nothing.
    control: str | None = None

    def host(self, domain: str) -> str:
        return f"{self.name}.{domain}"

    def tls_host(self, domain: str) -> str:
        """The name the sender connects to, looks up TLSA for, and sends in SNI."""
        return f"{self.mx}.{domain}" if self.mx else self.host(domain)

    def address(self, alias: str, domain: str) -> str:
        return f"{alias}@{self.host(domain)}"

    @property
    def tls_required(self) -> bool:
        """A DANE sender must use TLS here: a signed, non-empty TLSA RRset, usable or not
        (RFC 7672 §2.2; §3.1.3: unusable records still make TLS mandatory)."""
        return self.zone is Zone.PARENT and self.tlsa is not Tlsa.NONE


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

# The RFC 7672 conformance matrix (README, "The RFC 7672 conformance matrix"); what a
# DANE-validating Postfix 3.7 does with each probe is checked in tests/lab/test_matrix_lab.py.
MATRIX: tuple[Probe, ...] = (
    Probe(
        name="ee",
        expect=Expect.DELIVER,
        tlsa=Tlsa.EE,
        chain=Chain.EE,
        tests="Only a DANE-EE (3 1 1) record, for a self-signed, expired certificate naming another host.",
        proves_pass="Your server applies DANE-EE as specified: the key matches, so names and dates do not matter.",
        proves_fail="Your server refuses a correct DANE-EE match because of the certificate's name or dates: "
        "mail to domains that publish DANE-EE records will be delayed or bounce.",
        rfc="RFC 7672 §3.1.1",
        classic=False,
    ),
    Probe(
        name="ta",
        expect=Expect.DELIVER,
        tlsa=Tlsa.TA,
        tests="Only a DANE-TA (2 1 1) record for our CA; the server certificate it issued names the host.",
        proves_pass="Your server builds the chain to a DANE-TA trust anchor and delivers.",
        proves_fail="Your server cannot use DANE-TA records: mail to domains that publish them will be delayed.",
        rfc="RFC 7672 §3.1.2",
        classic=False,
    ),
    Probe(
        name="ta-badname",
        expect=Expect.REFUSE,
        tlsa=Tlsa.TA,
        chain=Chain.BADNAME,
        tests="DANE-TA record for our CA; the certificate it issued names another host.",
        proves_pass="Your server checks the host name under DANE-TA, as it must.",
        proves_fail="Your server skips the name check under DANE-TA: anyone holding a certificate from the same "
        "CA for another name can intercept your mail.",
        rfc="RFC 7672 §3.2.2",
        classic=False,
    ),
    Probe(
        name="ta-expired",
        expect=Expect.REFUSE,
        tlsa=Tlsa.TA,
        chain=Chain.EXPIRED,
        tests="DANE-TA record for our CA; the certificate it issued has expired.",
        proves_pass="Your server checks expiry under DANE-TA (only DANE-EE waives it).",
        proves_fail="Your server accepts expired certificates under DANE-TA: a stolen, long-expired key still "
        "intercepts your mail.",
        rfc="RFC 7672 §3.1.2",
        classic=False,
    ),
    Probe(
        name="ta-rogue",
        expect=Expect.REFUSE,
        tlsa=Tlsa.TA,
        chain=Chain.ROGUE,
        tests="DANE-TA record for our CA; the certificate comes from an unrelated CA, with our (public) CA "
        "certificate sent alongside.",
        proves_pass="Your server requires the chain to lead to the trust anchor, not merely to contain it.",
        proves_fail="Your server accepts a certificate chain that does not lead to your trust anchor: an attacker "
        "on the path can read your mail.",
        rfc="RFC 7671 §5.2.2",
        classic=False,
    ),
    Probe(
        name="unusable",
        expect=Expect.DELIVER,
        tlsa=Tlsa.UNUSABLE,
        tests="Only PKIX-TA/PKIX-EE (usage 0 and 1) records, which SMTP senders must treat as unusable.",
        proves_pass="Your server ignores unusable TLSA records and still delivers over TLS.",
        proves_fail="Your server refuses mail over unusable TLSA records (RFC 7672 treats them as if absent, "
        "with TLS still mandatory): mail to such domains is delayed.",
        rfc="RFC 7672 §3.1.3",
        classic=False,
    ),
    Probe(
        name="unusable-notls",
        expect=Expect.REFUSE,
        tlsa=Tlsa.UNUSABLE,
        starttls=False,
        tests="Only unusable TLSA records, and no STARTTLS offered.",
        proves_pass="Your server keeps TLS mandatory even when every TLSA record is unusable.",
        proves_fail="Your server sent mail in plaintext to a domain that requires TLS: a downgrade attack "
        "that strips STARTTLS reads your mail.",
        rfc="RFC 7672 §3.1.3",
        classic=False,
    ),
    Probe(
        name="bogus",
        expect=Expect.NEVER_CONNECT,
        tlsa=Tlsa.MATCH,
        zone=Zone.BOGUS,
        control="do",
        tests="A signed child zone whose TLSA signature is corrupt: the lookup fails validation.",
        proves_pass="Your server treats a failed TLSA lookup as a reason to wait, not to send.",
        proves_fail="Your server delivered although the TLSA lookup failed validation: an attacker who forges "
        "the DNS answer can downgrade your mail to unauthenticated TLS.",
        rfc="RFC 7672 §2.2",
        classic=False,
    ),
    Probe(
        name="unsigned",
        expect=Expect.DELIVER,
        tlsa=Tlsa.MISMATCH,
        zone=Zone.UNSIGNED,
        tests="Non-matching TLSA in a child zone delegated without DS (provably insecure).",
        proves_pass="Your server ignores TLSA records that DNSSEC does not protect.",
        proves_fail="Your server acted on unsigned TLSA records: anyone who can forge DNS can stop your mail.",
        rfc="RFC 7672 §2.2",
        classic=False,
    ),
    Probe(
        name="notls",
        expect=Expect.REFUSE,
        tlsa=Tlsa.MATCH,
        starttls=False,
        tests="Correct, signed TLSA records, but no STARTTLS offered.",
        proves_pass="Your server refuses to send in plaintext where DANE requires TLS.",
        proves_fail="Your server sent in plaintext to a DANE-protected domain: stripping STARTTLS downgrades "
        "your mail to cleartext.",
        rfc="RFC 7672 §2.2",
        classic=False,
    ),
    Probe(
        name="mx",
        expect=Expect.DELIVER,
        tlsa=Tlsa.MATCH,
        mx="mxhost",
        tests="The domain's MX is another host; TLSA is published only for that MX host.",
        proves_pass="Your server looks TLSA up at the MX host's name and sends that name in SNI.",
        proves_fail="Your server does not find TLSA at the MX host: mail to most DANE domains is not protected.",
        rfc="RFC 7672 §2.2.2, §8.1",
        classic=False,
    ),
)

CATALOGUE: dict[str, Probe] = {p.name: p for p in CLASSIC + MATRIX}


def enabled(names: list[str] | None = None, matrix: bool = False) -> tuple[Probe, ...]:
    """The probes a deployment serves, in catalogue order: the names given (default
    the classic three), plus every matrix probe when `matrix` is on."""
    names = [p.name for p in CLASSIC] if names is None else names
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown:
        raise KeyError(", ".join(unknown))
    return tuple(p for p in CATALOGUE.values() if p.name in names or (matrix and not p.classic))


def probe_for_host(probes: tuple[Probe, ...], domain: str, host: str) -> Probe | None:
    """The probe whose mail domain (RCPT) or TLS host (SNI) is `host`."""
    host = host.lower().rstrip(".")
    for p in probes:
        if p.host(domain) == host or p.tls_host(domain) == host:
            return p
    return None

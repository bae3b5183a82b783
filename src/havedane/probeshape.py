"""What a probe is: what a DANE sender must do there, the shape of its TLSA records, zone
and certificate chain, and the names it lives at. The rows themselves, the catalogue, are
in havedane.probes; this module holds their shape and reads host names back into them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# Every test has its own host under each probe: <alias>.<probe>.<domain>, published once
# as a wildcard (*.<probe>.<domain>, RFC 4592), so that a session is tied to its test by
# the host it names: in RCPT, or in SNI when it never sends MAIL (a refusal).
ALIAS = re.compile(r"[a-z0-9]{1,63}")  # the alphabet of aliases (web.app.new_alias); one DNS label
# The local part of the addresses handed out. Any local part is accepted at RCPT: the test
# is named by the host (postmaster@, RFC 5321 §4.5.1, reaches it too).
LOCAL_PART = "test"


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
    # Sets where one record matches and another does not: any one match authenticates.
    MIXED_EE = "mixed-ee"  # 3 1 1 of each served leaf + a 2 1 1 that matches nothing
    MIXED_TA = "mixed-ta"  # 3 1 1 that match nothing + 2 1 1 of the genuine CA
    TA_FULL = "ta-full"  # only 2 1 0: the CA's full SubjectPublicKeyInfo (RFC 7671 §5.2.2)


class Zone(enum.StrEnum):
    """Where the probe's names live, and how that part of the DNS is signed."""

    PARENT = "parent"  # in the signed base zone
    BOGUS = "bogus"  # a child zone with DS in the parent whose TLSA signature is broken
    UNSIGNED = "unsigned"  # a child zone delegated without DS: provably insecure
    # A child zone of its own at the probe's MX host, with DS in the parent, signed validly
    # except the NSEC3 that proves no TLSA at _25._tcp.<MX host>: its signature is broken.
    BOGUS_DENIAL = "bogus-denial"


class Chain(enum.StrEnum):
    """A certificate chain served only to senders that name the probe in SNI."""

    EE = "ee"  # self-signed, expired, naming another host: fine for DANE-EE (RFC 7672 §3.1.1)
    BADNAME = "badname"  # issued by our CA, naming another host
    EXPIRED = "expired"  # issued by our CA, expired
    ROGUE = "rogue"  # issued by an unrelated CA; chain = leaf + that CA + our CA
    LEAF_ONLY = "leaf-only"  # issued by our CA, sent without it (RFC 7671 §5.2.2 allows that under 2 1 0)


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
    # Label of a preferred MX host (MX 10; `mx` is then MX 20) whose TLSA match nothing it
    # serves: a DANE sender skips it and delivers through `mx` (RFC 7672 §2.2).
    mx_first: str | None = None
    zone: Zone = Zone.PARENT
    # A probe whose delivery shows the sender can do what this one needs (e.g. DNSSEC
    # lookups of TLSA): without it a missing delivery proves nothing.
    control: str | None = None
    # What to do when this probe fails, where the page's general advice (upgrade the mail
    # server and its TLS library) misses the cause: "" for the certificate rows.
    advice: str = ""

    def zone_apex(self, domain: str) -> str:
        """The apex of the probe's child zone: its MX host where the zone is cut there
        (BOGUS_DENIAL: the test hosts stay in the validly signed parent), else `base`."""
        return (self.mx_host(domain) or self.base(domain)) if self.zone is Zone.BOGUS_DENIAL else self.base(domain)

    def base(self, domain: str) -> str:
        """The name every test's host is below: the wildcard's parent (and the apex of a
        child zone)."""
        return f"{self.name}.{domain}"

    def wildcard(self, domain: str) -> str:
        """The owner of the wildcard records that serve every test's host (RFC 4592)."""
        return f"*.{self.base(domain)}"

    def host(self, domain: str, alias: str | None = None) -> str:
        """A test's mail domain at this probe, `<alias>.<probe>.<domain>`; without an
        alias, the name all of them are below (`base`)."""
        return f"{alias}.{self.base(domain)}" if alias else self.base(domain)

    def mx_host(self, domain: str) -> str | None:
        """The fixed MX host of a probe that has one (the same for every test)."""
        return f"{self.mx}.{domain}" if self.mx else None

    def first_mx_host(self, domain: str) -> str | None:
        """The preferred MX host a DANE sender must skip, for a probe that has one."""
        return f"{self.mx_first}.{domain}" if self.mx_first else None

    def mx_records(self, domain: str) -> list[tuple[int, str]]:
        """(preference, host) of every MX host of the probe: none, its MX host at 10, or
        the host to skip at 10 and its MX host at 20."""
        first, mx = self.first_mx_host(domain), self.mx_host(domain)
        return [(10, first), (20, mx)] if first and mx else [(10, mx)] if mx else []

    def tls_host(self, domain: str, alias: str | None = None) -> str:
        """The name the sender connects to, looks up TLSA for, and sends in SNI: the MX
        host, or the test's host (without an alias, the name its hosts are below)."""
        return self.mx_host(domain) or self.host(domain, alias)

    def tls_name(self, domain: str) -> str:
        """The name that covers the TLS host of every test: the MX host, or the wildcard.
        It owns the TLSA RRset (`_25._tcp.<MX host>`, or the wildcard itself, which also
        answers `_25._tcp.<alias>.<probe>.<domain>`) and is the certificate's name."""
        return self.mx_host(domain) or self.wildcard(domain)

    def tlsa_owner(self, domain: str) -> str:
        return f"_25._tcp.{self.mx_host(domain)}" if self.mx else self.wildcard(domain)

    def address(self, alias: str, domain: str) -> str:
        return f"{LOCAL_PART}@{self.host(domain, alias)}"

    @property
    def sni_names_test(self) -> bool:
        """Whether a DANE sender's SNI names the test: the TLS host carries the alias. Not
        at a fixed MX host (its evidence is tied by RCPT only) nor without STARTTLS."""
        return self.starttls and self.mx is None

    @property
    def tls_required(self) -> bool:
        """A DANE sender must use TLS here: a signed, non-empty TLSA RRset, usable or not
        (RFC 7672 §2.2; §3.1.3: unusable records still make TLS mandatory)."""
        return self.zone is Zone.PARENT and self.tlsa is not Tlsa.NONE


@dataclass(frozen=True)
class Named:
    """What a host name (in RCPT or in SNI) names: a probe, and the test whose host it is."""

    probe: Probe
    alias: str | None  # None: a fixed host of the probe (its MX host), no test's


def probe_for_host(probes: tuple[Probe, ...], domain: str, host: str) -> Named | None:
    """The probe and test named by `host`: `<alias>.<probe>.<domain>` (any case, a final
    dot allowed), or a probe's fixed MX host (no alias). None for anything else, an
    alias outside [a-z0-9] included."""
    name, domain = host.lower().rstrip("."), domain.lower().rstrip(".")
    for p in probes:
        if name in (p.mx_host(domain), p.first_mx_host(domain)):
            return Named(p, None)
    alias, _, base = name.partition(".")
    probe = next((p for p in probes if p.base(domain) == base), None)
    if probe is None or not ALIAS.fullmatch(alias):
        return None
    return Named(probe, alias)

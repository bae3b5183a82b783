"""The probe catalogue: the one place that knows what each probe is.

DNS output, the receiver, the verdict and the page all read these values; no
other module names a probe. Adding a probe means adding a row here.
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
        # Every test's host has the same MX host (*.mx.<domain> MX 10 mxhost.<domain>): SNI and
        # TLSA name mxhost, not the test, so this probe's sessions are tied by RCPT only.
        tests="The domain's MX is another host; TLSA is published only for that MX host.",
        proves_pass="Your server looks TLSA up at the MX host's name and sends that name in SNI.",
        proves_fail="Your server does not find TLSA at the MX host: mail to most DANE domains is not protected.",
        rfc="RFC 7672 §2.2.2, §8.1",
        classic=False,
    ),
    Probe(
        name="denial-bogus",
        expect=Expect.NEVER_CONNECT,
        tlsa=Tlsa.NONE,
        mx="mxdenial",
        zone=Zone.BOGUS_DENIAL,
        control="do",
        # *.denial-bogus MX 10 mxdenial.<domain>, in the parent: the MX and address lookups
        # validate. mxdenial.<domain> is a signed child zone with a placeholder at
        # _25._tcp.mxdenial, so "no TLSA there" is proven by that name's NSEC3 alone (a
        # NODATA answer, RFC 5155 §7.2.3), and only that NSEC3's signature is broken.
        tests="The MX host publishes no TLSA, but the signed proof that there are none does not validate.",
        proves_pass="Your server treats a proof of non-existence that fails validation as a lookup error, and waits.",
        proves_fail="Your server delivered although the proof that no TLSA exist failed validation: an "
        'attacker who forges "no TLSA" can downgrade your mail to unauthenticated or no TLS.',
        rfc="RFC 7672 §2.2, RFC 4035 §5.4",
        classic=False,
        advice="This one is about DNS: your server must look TLSA up through a validating resolver and treat "
        'an answer that fails validation (SERVFAIL) as a reason to wait, never as "no TLSA". Check that the '
        "resolver it uses validates (its answers carry the AD bit), and that your server's DANE code does not "
        "fall back to opportunistic TLS when the TLSA lookup fails.",
    ),
    Probe(
        name="mx-fallback",
        expect=Expect.DELIVER,
        tlsa=Tlsa.MATCH,
        mx="mxok",
        mx_first="mxfail",
        # *.mx-fallback MX 10 mxfail.<domain>, MX 20 mxok.<domain>; the sessions say which
        # host they came in on by SNI (a DANE sender names the MX host, RFC 7672 §8.1).
        # A sender that refuses mxfail and then defers the whole message fails: RFC 7672
        # §2.2 has it treat a host that fails authentication as unusable and go on to the
        # next MX (RFC 5321 §5.1), so deferring delays mail a correct MX host would take.
        tests="Two MX hosts: the preferred one's TLSA match nothing it serves; the other's are correct.",
        proves_pass="Your server skipped the MX host that failed DANE authentication and delivered through "
        "the next one.",
        proves_fail="Your server does not move on to the next MX host when DANE authentication fails at one: "
        "mail waits (or bounces) while a correct MX host is there to take it.",
        rfc="RFC 7672 §2.2, RFC 5321 §5.1",
        classic=False,
        advice="When DANE authentication fails at one MX host, your server must go on to the next one, as it "
        "does when a host does not answer. Check the settings that limit how many MX hosts are tried per "
        "delivery (in Postfix, smtp_mx_address_limit and smtp_mx_session_limit) and that a DANE failure is "
        "not treated as a reason to stop trying the others.",
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

"""The probe catalogue: the one place that knows what each probe is.

DNS output, the receiver, the verdict and the page all read these values; no
other module names a probe. Adding a probe means adding a row here (its shape, the
types of the row, is havedane.probeshape's, re-exported here).
"""

from __future__ import annotations

from havedane.probeshape import (
    ALIAS,
    LOCAL_PART,
    Chain,
    Expect,
    Named,
    Probe,
    Tlsa,
    Zone,
    probe_for_host,
)

__all__ = [
    "ALIAS",
    "CATALOGUE",
    "CLASSIC",
    "LOCAL_PART",
    "MATRIX",
    "Chain",
    "Expect",
    "Named",
    "Probe",
    "Tlsa",
    "Zone",
    "enabled",
    "probe_for_host",
]


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
        name="ta-notls",
        expect=Expect.REFUSE,
        tlsa=Tlsa.TA,
        starttls=False,
        tests="Only a DANE-TA (2 1 1) record for our CA, and no STARTTLS offered.",
        proves_pass="Your server treats DANE-TA records alone as making TLS mandatory.",
        proves_fail="Your server sent mail in plaintext to a domain whose only TLSA records are DANE-TA: it takes "
        "such a set for no TLSA, and stripping STARTTLS downgrades your mail to cleartext.",
        rfc="RFC 7672 §2.2",
        classic=False,
    ),
    Probe(
        name="mixed-ee",
        expect=Expect.DELIVER,
        tlsa=Tlsa.MIXED_EE,
        tests="A matching DANE-EE (3 1 1) record beside a DANE-TA (2 1 1) record that matches nothing.",
        proves_pass="Your server authenticates with any one matching TLSA record, as it must.",
        proves_fail="Your server requires every TLSA record to match: mail to domains in the middle of a key or "
        "CA change (old and new records side by side) is delayed.",
        rfc="RFC 7672 §3.1, RFC 7671 §8.1",
        classic=False,
    ),
    Probe(
        name="mixed-ta",
        expect=Expect.DELIVER,
        tlsa=Tlsa.MIXED_TA,
        tests="A matching DANE-TA (2 1 1) record beside a DANE-EE (3 1 1) record that matches nothing.",
        proves_pass="Your server falls back to the DANE-TA record when the DANE-EE one does not match.",
        proves_fail="Your server gives up when a DANE-EE record does not match, although a DANE-TA record does: "
        "mail to domains in the middle of a certificate change is delayed.",
        rfc="RFC 7672 §3.1, RFC 7671 §8.1",
        classic=False,
    ),
    Probe(
        name="ta-full",
        expect=Expect.DELIVER,
        tlsa=Tlsa.TA_FULL,
        chain=Chain.LEAF_ONLY,
        tests="Only a DANE-TA 2 1 0 record (our CA's full public key); the server sends its certificate "
        "without the CA.",
        proves_pass="Your server uses the public key in the record as the trust anchor, as it must when the "
        "server omits the CA.",
        proves_fail="Your server needs the CA certificate in the chain even with a full trust-anchor key in DNS: "
        "mail to domains that publish 2 1 0 records and omit their CA is delayed.",
        rfc="RFC 7671 §5.2.2, RFC 7672 §3.1.2",
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

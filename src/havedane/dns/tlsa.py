"""TLSA record values computed from certificates (RFC 6698 §2.1, RFC 7671 §5).

Pure functions: certificate in, record out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from havedane import probes

# Usages (RFC 7218 mnemonics). SMTP uses only DANE-TA(2) and DANE-EE(3): RFC 7672 §3.1.3.
DANE_TA = 2
DANE_EE = 3
SPKI = 1  # selector: SubjectPublicKeyInfo (RFC 7671 §5.1 recommends 3 1 1 and 2 1 1)
SHA256 = 1


@dataclass(frozen=True)
class TlsaRecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    def rdata(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def record(usage: int, cert: x509.Certificate, selector: int = SPKI, mtype: int = SHA256) -> TlsaRecord:
    """The TLSA record of `usage` for `cert` (selector 1 = SPKI, 0 = full cert; mtype 1 = SHA-256, 2 = SHA-512)."""
    content = spki(cert) if selector == SPKI else cert.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(content).digest() if mtype == SHA256 else hashlib.sha512(content).digest()
    return TlsaRecord(usage, selector, mtype, digest)


def mismatch(rec: TlsaRecord) -> TlsaRecord:
    """A record of the same shape whose digest matches nothing we serve.

    Derived (not random) so that `havedane records` prints the same set each run.
    """
    return TlsaRecord(rec.usage, rec.selector, rec.mtype, hashlib.sha256(b"havedane mismatch:" + rec.data).digest())


PKIX_TA = 0
PKIX_EE = 1


def for_probe(probe: probes.Probe, leaves: list[x509.Certificate], ca: x509.Certificate) -> list[TlsaRecord]:
    """The TLSA RRset at _25._tcp.<probe's TLS host>, for the leaves served to it."""
    matching = [record(DANE_EE, leaf) for leaf in leaves] + [record(DANE_TA, ca)]
    shape = probe.tlsa
    if shape is probes.Tlsa.MATCH:
        return matching
    if shape is probes.Tlsa.MISMATCH:
        return [mismatch(r) for r in matching]
    if shape is probes.Tlsa.EE:
        return [record(DANE_EE, leaf) for leaf in leaves]
    if shape is probes.Tlsa.TA:
        return [record(DANE_TA, ca)]
    if shape is probes.Tlsa.UNUSABLE:
        # Records that would match under PKIX usages, which SMTP must ignore (RFC 7672 §3.1.3).
        return [record(PKIX_TA, ca)] + [record(PKIX_EE, leaf) for leaf in leaves]
    return []


def matches(records: list[TlsaRecord], chain: list[x509.Certificate]) -> bool:
    """Whether any record matches the chain as RFC 7672 §3.1 reads it: DANE-EE against
    the leaf, DANE-TA against a certificate above it. (The chain-building of DANE-TA is
    left to the sender; this is the deployment check's view.)"""
    for rec in records:
        candidates = chain[:1] if rec.usage == DANE_EE else chain[1:] if rec.usage == DANE_TA else []
        if any(record(rec.usage, c, rec.selector, rec.mtype) == rec for c in candidates):
            return True
    return False

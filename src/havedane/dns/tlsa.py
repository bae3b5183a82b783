"""TLSA record values computed from certificates (RFC 6698 §2.1, RFC 7671 §5).

Pure functions: certificate in, record out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from havedane import probes

# Usages (RFC 7218 mnemonics). SMTP uses only DANE-TA(2) and DANE-EE(3): RFC 7672 §3.1.3.
DANE_TA = 2
DANE_EE = 3
SPKI = 1  # selector: SubjectPublicKeyInfo (RFC 7671 §5.1 recommends 3 1 1 and 2 1 1)
SHA256 = 1
FULL = 0  # matching type Full: the selected content itself (RFC 6698 §2.1.3)


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
    if mtype == FULL:
        return TlsaRecord(usage, selector, mtype, content)
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
    if shape is probes.Tlsa.MIXED_EE:
        return [record(DANE_EE, leaf) for leaf in leaves] + [mismatch(record(DANE_TA, ca))]
    if shape is probes.Tlsa.MIXED_TA:
        return [mismatch(record(DANE_EE, leaf)) for leaf in leaves] + [record(DANE_TA, ca)]
    if shape is probes.Tlsa.TA_FULL:
        # The CA's whole public key: a sender can use it as the trust anchor even when the
        # server does not send the CA certificate (RFC 7671 §5.2.2).
        return [record(DANE_TA, ca, SPKI, FULL)]
    if shape is probes.Tlsa.UNUSABLE:
        # Records that would match under PKIX usages, which SMTP must ignore (RFC 7672 §3.1.3).
        return [record(PKIX_TA, ca)] + [record(PKIX_EE, leaf) for leaf in leaves]
    return []


# The (usage, selector, matching type) of each record a shape publishes (`for_probe`),
# for `havedane check` to compare with what the resolver returns.
_BOTH = frozenset({(DANE_EE, SPKI, SHA256), (DANE_TA, SPKI, SHA256)})
PARAMS: dict[probes.Tlsa, frozenset[tuple[int, int, int]]] = {
    probes.Tlsa.MATCH: _BOTH,
    probes.Tlsa.MISMATCH: _BOTH,
    probes.Tlsa.EE: frozenset({(DANE_EE, SPKI, SHA256)}),
    probes.Tlsa.TA: frozenset({(DANE_TA, SPKI, SHA256)}),
    probes.Tlsa.UNUSABLE: frozenset({(PKIX_TA, SPKI, SHA256), (PKIX_EE, SPKI, SHA256)}),
    probes.Tlsa.MIXED_EE: _BOTH,
    probes.Tlsa.MIXED_TA: _BOTH,
    probes.Tlsa.TA_FULL: frozenset({(DANE_TA, SPKI, FULL)}),
}
# The mixed shapes: the usage whose records match the served chain; the other's must not.
MIXED: dict[probes.Tlsa, int] = {probes.Tlsa.MIXED_EE: DANE_EE, probes.Tlsa.MIXED_TA: DANE_TA}


def matches(records: list[TlsaRecord], chain: list[x509.Certificate]) -> bool:
    """Whether any record matches the chain as RFC 7672 §3.1 reads it: DANE-EE against
    the leaf, DANE-TA against a certificate above it, or a full DANE-TA public key (2 1 0)
    that signed the last certificate sent (RFC 7671 §5.2.2: the server may omit the
    anchor). (The chain-building of DANE-TA is left to the sender; this is the
    deployment check's view.)"""
    return any(matching(rec, chain) for rec in records)


def matching(rec: TlsaRecord, chain: list[x509.Certificate]) -> bool:
    """Whether this one record matches the chain (see `matches`)."""
    candidates = chain[:1] if rec.usage == DANE_EE else chain[1:] if rec.usage == DANE_TA else []
    if any(record(rec.usage, c, rec.selector, rec.mtype) == rec for c in candidates):
        return True
    full_key = rec.usage == DANE_TA and (rec.selector, rec.mtype) == (SPKI, FULL)
    return full_key and anchored_by(chain, rec.data)


def anchored_by(chain: list[x509.Certificate], spki_der: bytes) -> bool:
    """Whether the key `spki_der` signed a certificate on the issuer path up from the leaf
    (each next one the issuer named by the one before): the anchor itself need not be
    sent (RFC 7671 §5.2.2), and a sent CA that the leaf does not chain to does not count."""
    cert, steps = (chain[0] if chain else None), 0
    while cert is not None and steps < len(chain):
        if signed_by(cert, spki_der):
            return True
        issuer = cert.issuer
        cert = next((c for c in chain if c.subject == issuer and c is not cert), None)
        steps += 1
    return False


def signed_by(cert: x509.Certificate, spki_der: bytes) -> bool:
    """Whether `cert` carries a valid signature by the key `spki_der` (a DER SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_der_public_key(spki_der)
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            return False
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        else:
            return False
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True

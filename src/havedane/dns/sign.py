"""DNSSEC signing of the base zone with dnspython, and the DS for the parent.

One key, a combined signing key (CSK: DNSKEY flags 257, RFC 4034 §2.1.1), signs
every RRset. A KSK/ZSK split (RFC 6781 §3.1) pays off when the ZSK is rolled
often without touching the parent; havedane has no rollover machinery, the zone
is small, and the operator hands one DS to the registrar once. One key means one
DS, one file to back up, and no way to publish the DS of the wrong key.

Algorithm 13, ECDSA P-256 with SHA-256 (RFC 6605): MUST-implement for validators
(RFC 8624 §3.1), small signatures. Authenticated denial by NSEC (RFC 4034 §4):
the names in this zone are public by design, so NSEC3's hashing buys nothing.

Pure: the key is made, read and written as bytes here; the file it lives in is
havedane.zonekeys's business.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import dns.dnssec
import dns.dnssectypes
import dns.name
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rrset
import dns.transaction
import dns.zone
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = dns.dnssectypes.Algorithm.ECDSAP256SHA256
CSK_FLAGS = 257  # ZONE | SEP: the key the parent's DS points at, and the one that signs everything
# Signatures start an hour back, so a validator whose clock is a little behind accepts
# them (RFC 4035 §5.3.1 checks inception), and last 30 days: the zone must be signed
# again before then, e.g. by a weekly `havedane zone --sign` from cron.
INCEPTION_SKEW = datetime.timedelta(hours=1)
LIFETIME = datetime.timedelta(days=30)


class SigningKeyError(ValueError):
    """Key bytes that cannot be used; the message says which and why."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM, the form `load_key` reads back."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(pem: bytes, source: str) -> ec.EllipticCurvePrivateKey:
    """The signing key in `pem` (read from `source`, named in the error)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"{source}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{source}: not an ECDSA P-256 key (DNSSEC algorithm 13 needs one)")
    return key


def dnskey(key: ec.EllipticCurvePrivateKey) -> dns.rdtypes.ANY.DNSKEY.DNSKEY:
    return dns.dnssec.make_dnskey(key.public_key(), ALGORITHM, flags=CSK_FLAGS)


def sign(
    zone: dns.zone.Zone,
    key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime | None = None,
    corrupt: frozenset[dns.rdatatype.RdataType] = frozenset(),
) -> None:
    """Add the DNSKEY, an RRSIG by the CSK over every authoritative RRset, and the NSEC
    chain (sign_zone leaves out glue and what lies below a delegation, RFC 4035 §2.2).
    With the SEP key as the only key, sign_zone signs every RRset with it.

    `corrupt`: RRset types whose signatures are made and then broken on purpose (the
    `bogus` probe: its TLSA must fail validation, RFC 4035 §5.3.3, and nothing else).
    """
    now = now or datetime.datetime.now(datetime.UTC)
    inception, expiration = now - INCEPTION_SKEW, now + LIFETIME
    keys: list[tuple[dns.dnssec.PrivateKey, dns.rdtypes.ANY.DNSKEY.DNSKEY]] = [(key, dnskey(key))]
    if not corrupt:
        dns.dnssec.sign_zone(zone, keys=keys, inception=inception, expiration=expiration)
        return
    if zone.origin is None:
        raise ValueError("a zone to sign needs an origin")
    signer = _corrupting_signer(zone.origin, key, inception, expiration, corrupt)
    dns.dnssec.sign_zone(zone, keys=keys, rrset_signer=signer)


def _corrupting_signer(
    origin: dns.name.Name,
    key: ec.EllipticCurvePrivateKey,
    inception: datetime.datetime,
    expiration: datetime.datetime,
    corrupt: frozenset[dns.rdatatype.RdataType],
) -> Callable[[dns.transaction.Transaction, dns.rrset.RRset], None]:
    dnssec_key = dnskey(key)

    def sign_rrset(txn: dns.transaction.Transaction, rrset: dns.rrset.RRset) -> None:
        rrsig = dns.dnssec.sign(
            rrset, key, signer=origin, dnskey=dnssec_key, inception=inception, expiration=expiration, origin=origin
        )
        if rrset.rdtype in corrupt:
            broken = rrsig.replace(signature=rrsig.signature[:-1] + bytes([rrsig.signature[-1] ^ 0x01]))
            txn.add(rrset.name, rrset.ttl, broken)
        else:
            txn.add(rrset.name, rrset.ttl, rrsig)

    return sign_rrset


def ds(domain: str, key: ec.EllipticCurvePrivateKey) -> str:
    """The DS rdata for the key: SHA-256 digest (type 2), the one RFC 8624 §3.3 says to use."""
    return dns.dnssec.make_ds(dns.name.from_text(domain), dnskey(key), "SHA256").to_text()


def ds_lines(domain: str, key: ec.EllipticCurvePrivateKey, ttl: int) -> list[str]:
    """The DS record(s) to publish in the parent zone."""
    return [f"{dns.name.from_text(domain).to_text()} {ttl} IN DS {ds(domain, key)}"]

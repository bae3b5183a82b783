"""DNSSEC signing of the base zone with dnspython, and the DS for the parent.

One key, a combined signing key (CSK: DNSKEY flags 257, RFC 4034 §2.1.1), signs
every RRset. A KSK/ZSK split (RFC 6781 §3.1) pays off when the ZSK is rolled
often without touching the parent; havedane has no rollover machinery, the zone
is small, and the operator hands one DS to the registrar once. One key means one
DS, one file to back up, and no way to publish the DS of the wrong key.

Algorithm 13, ECDSA P-256 with SHA-256 (RFC 6605): MUST-implement for validators
(RFC 8624 §3.1), small signatures.

Authenticated denial by NSEC3 (RFC 5155) with the parameters RFC 9276 §3.1 asks for:
SHA-1, no salt, no extra iterations, no opt-out. Not to hide names (they are public by
design) but so that queries reach us: from an NSEC chain a validating resolver proves
new names absent, or answers them from a cached wildcard, on its own (aggressive use,
RFC 8198 §4, on by default in Unbound), and a per-test name's lookups would never show
at the authoritative server. Resolvers do not synthesise from NSEC3 (Unbound does not;
RFC 8198 §4 leaves it optional), so each new name is asked for. dnspython's sign_zone
does NSEC only: the NSEC3 chain is built here.

Pure: the key is made, read and written as bytes here; the file it lives in is
havedane.zonekeys's business.
"""

from __future__ import annotations

import base64
import datetime

import dns.dnssec
import dns.dnssectypes
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rrset
import dns.transaction
import dns.zone
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = dns.dnssectypes.Algorithm.ECDSAP256SHA256
NSEC3_HASH = dns.dnssectypes.NSEC3Hash.SHA1  # the only one defined (RFC 5155 §11)
NSEC3_ITERATIONS = 0  # RFC 9276 §3.1: extra iterations cost validators, protect nothing
# The DNSKEY's TTL, short so that a new test usually sees the sender's resolver fetch
# the DNSKEY (the one sign that it validates) instead of using a cached copy: a
# resolver that resolved in this zone less than DNSKEY_TTL seconds ago shows nothing.
# 5 s, because a shorter one buys nothing: resolvers raise small TTLs to a floor of
# their own (Knot Resolver's cache.min_ttl is 5 s; Unbound's cache-min-ttl and BIND's
# min-cache-ttl default to 0). The cost: at most one more DNSKEY query per resolver
# every DNSKEY_TTL seconds while it resolves names here (a ~300-byte answer; Knot
# answers those at line rate), and one more round trip in that resolver's lookup.
# The DS at the parent keeps the parent's TTL: validators ask for it no more often.
DNSKEY_TTL = 5
CSK_FLAGS = 257  # ZONE | SEP: the key the parent's DS points at, and the one that signs everything
# Signatures start an hour back, so a validator whose clock is a little behind accepts
# them (RFC 4035 §5.3.1 checks inception), and last 30 days: the zone must be signed
# again before then: deploy/havedane-resign.timer runs `havedane zone --sign` daily.
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
    corrupt_denial: frozenset[dns.name.Name] = frozenset(),
) -> None:
    """Sign `zone` afresh: drop any earlier DNSSEC records, add the DNSKEY and
    NSEC3PARAM at the apex and the NSEC3 chain, then an RRSIG by the CSK over every
    authoritative RRset, the NSEC3s included. Not signed: what lies below a zone cut
    (glue) and the NS at a cut, which is the child's (RFC 4035 §2.2).

    `corrupt`: RRset types whose signatures are made and then broken on purpose (the
    `bogus` probe: its TLSA must fail validation, RFC 4035 §5.3.3, and nothing else).
    `corrupt_denial`: names whose NSEC3 (the record that proves what they lack, RFC 5155
    §7.2.3) gets a broken signature (the `denial-bogus` probe).
    """
    origin = zone.origin
    if origin is None:
        raise ValueError("a zone to sign needs an origin")
    now = now or datetime.datetime.now(datetime.UTC)
    dnssec_key = dnskey(key)
    with zone.writer() as txn:
        for name in list(txn.iterate_names()):
            node = txn.get_node(name)
            for rds in list(node.rdatasets) if node else []:
                if rds.rdtype in _DNSSEC_TYPES or rds.covers in _DNSSEC_TYPES:
                    txn.delete(name, rds.rdtype, rds.covers)
        soa = zone.get_soa(txn)
        # RFC 9077 §3.2: negative answers live no longer than min(SOA TTL, SOA MINIMUM).
        denial_ttl = min(txn.get(origin, dns.rdatatype.SOA).ttl, soa.minimum)
        txn.add(origin, DNSKEY_TTL, dnssec_key)
        param = f"{int(NSEC3_HASH)} 0 {NSEC3_ITERATIONS} -"  # flags 0: no opt-out; "-": no salt
        txn.add(origin, denial_ttl, dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NSEC3PARAM, param))
        to_sign = _signed_rrsets(txn, origin)
        broken = {_nsec3_owner(name, origin) for name in corrupt_denial}
        for owner, nsec3 in _nsec3_chain(txn, origin, to_sign):
            txn.add(owner, denial_ttl, nsec3)
            to_sign[owner] = [dns.rdatatype.NSEC3]
        for name, rdtypes in to_sign.items():
            for rdtype in rdtypes:
                rrset = dns.rrset.from_rdata(name, txn.get(name, rdtype).ttl, *txn.get(name, rdtype))
                rrsig: dns.rdata.Rdata = dns.dnssec.sign(
                    rrset, key, signer=origin, dnskey=dnssec_key, inception=now - INCEPTION_SKEW,
                    expiration=now + LIFETIME, origin=origin,
                )  # fmt: skip
                if rdtype in corrupt or (rdtype == dns.rdatatype.NSEC3 and name in broken):
                    sig = rrsig.signature  # type: ignore[attr-defined]
                    rrsig = rrsig.replace(signature=sig[:-1] + bytes([sig[-1] ^ 0x01]))
                txn.add(name, rrset.ttl, rrsig)


_DNSSEC_TYPES = frozenset(
    {dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3, dns.rdatatype.NSEC3PARAM, dns.rdatatype.DNSKEY}
)


def _signed_rrsets(
    txn: dns.transaction.Transaction, origin: dns.name.Name
) -> dict[dns.name.Name, list[dns.rdatatype.RdataType]]:
    """Every authoritative name, with the types of its RRsets to sign: all of them,
    except at a zone cut (below the apex), where only the DS is the parent's. Names
    below a cut are the child's (glue) and left out entirely."""
    out: dict[dns.name.Name, list[dns.rdatatype.RdataType]] = {}
    cut: dns.name.Name | None = None
    for name in sorted(txn.iterate_names()):
        if cut is not None and name.is_subdomain(cut):
            continue
        node = txn.get_node(name)
        rdtypes = [rds.rdtype for rds in node.rdatasets] if node else []
        if name != origin and dns.rdatatype.NS in rdtypes:
            cut = name
            rdtypes = [t for t in rdtypes if t == dns.rdatatype.DS]
        out[name] = rdtypes
    return out


def _nsec3_chain(
    txn: dns.transaction.Transaction,
    origin: dns.name.Name,
    names: dict[dns.name.Name, list[dns.rdatatype.RdataType]],
) -> list[tuple[dns.name.Name, dns.rdata.Rdata]]:
    """RFC 5155 §7.1: one NSEC3 for each authoritative name and each empty non-terminal
    above one, owned by the base32hex hash of the name, naming the next hash in order
    (the last wraps to the first), listing the types present at the name (RRSIG where
    something is signed; never NSEC3 itself). Opt-out is off: every delegation, signed
    or not, gets its own NSEC3, which proves the absence of DS at an insecure one."""
    covered = {origin}
    for name in names:
        while name != origin and name not in covered:
            covered.add(name)
            name = name.parent()
    hashed = {_hash(name): name for name in covered}
    if len(hashed) != len(covered):
        raise ValueError("NSEC3 hash collision: two names of the zone hash alike")  # SHA-1: never seen in practice
    order = sorted(hashed)
    chain = []
    for digest, following in zip(order, [*order[1:], order[0]], strict=True):
        name = hashed[digest]
        node = txn.get_node(name)
        types = [rds.rdtype for rds in node.rdatasets] if node else []
        if names.get(name):
            types.append(dns.rdatatype.RRSIG)
        bitmap = " ".join(dns.rdatatype.to_text(t) for t in sorted(set(types)))
        text = f"{int(NSEC3_HASH)} 0 {NSEC3_ITERATIONS} - {_b32(following)} {bitmap}"
        nsec3 = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NSEC3, text)
        chain.append((_nsec3_owner(name, origin), nsec3))
    return chain


def _nsec3_owner(name: dns.name.Name, origin: dns.name.Name) -> dns.name.Name:
    """The owner of `name`'s NSEC3: the base32hex hash of the name, below the apex."""
    return dns.name.Name([_b32(_hash(name)).encode(), *origin.labels])


def _b32(digest: bytes) -> str:
    return base64.b32hexencode(digest).decode().lower()


def _hash(name: dns.name.Name) -> bytes:
    return base64.b32hexdecode(dns.dnssec.nsec3_hash(name, None, NSEC3_ITERATIONS, NSEC3_HASH))


def ds(domain: str, key: ec.EllipticCurvePrivateKey) -> str:
    """The DS rdata for the key: SHA-256 digest (type 2), the one RFC 8624 §3.3 says to use."""
    return dns.dnssec.make_ds(dns.name.from_text(domain), dnskey(key), "SHA256").to_text()


def ds_lines(domain: str, key: ec.EllipticCurvePrivateKey, ttl: int) -> list[str]:
    """The DS record(s) to publish in the parent zone."""
    return [f"{dns.name.from_text(domain).to_text()} {ttl} IN DS {ds(domain, key)}"]

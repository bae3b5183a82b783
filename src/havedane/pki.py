"""The certificates havedane serves: a long-lived CA and leaves for every probe host.

Layout of the TLS directory (written by `havedane init`):

    ca.pem, ca.key                  the CA (ECDSA P-256, 100 years, like the original's)
    leaf-ecdsa.pem, leaf-ecdsa.key  ECDSA P-256 leaf naming every probe's hosts (*.<probe>.<domain>)
    leaf-rsa.pem, leaf-rsa.key      RSA 2048 leaf, same names, for senders without ECDSA
    chain-ecdsa.pem, chain-rsa.pem  leaf + CA: DANE-TA (2 1 1) needs the CA in the chain
                                    (RFC 7671 §5.2.2)
    chain-<name>.pem, leaf-<name>.* the conformance probes' chains (probes.Chain), served
                                    only to senders that name such a probe in SNI (ECDSA)
    chain-<name>-rsa.pem, ...       each one's RSA sibling: same shape, RSA 2048 leaf

Both leaves of a chain are served side by side (OpenSSL picks by the signature
algorithms the client offers, RFC 8446 §4.2.3 / RFC 5246 §7.4.1.4.1), so that a sender
that cannot verify ECDSA is shown the same certificate, not a failed handshake; TLSA
3 1 1 is published for each leaf.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from havedane import probes

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
LEAF_KINDS = ("ecdsa", "rsa")


@dataclass(frozen=True)
class Chain:
    """One served chain: leaf first, then its issuers."""

    kind: str
    cert_file: Path  # chain PEM
    key_file: Path
    leaf: x509.Certificate
    issuers: tuple[x509.Certificate, ...]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "havedane"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def new_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(cn: str, key: PrivateKey, years: int = 100) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_leaf(
    names: list[str],
    key: PrivateKey,
    ca: x509.Certificate,
    ca_key: PrivateKey,
    days: int = 3650,
    not_before: datetime.datetime | None = None,
    self_signed: bool = False,
) -> x509.Certificate:
    start = not_before or _now() - datetime.timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(_name(names[0]) if self_signed else ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_key(path: Path, key: PrivateKey) -> None:
    """Private keys are readable by their owner only."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def default_names(domain: str) -> list[str]:
    """Names on the default leaves: the name covering the TLS host of every test at a
    probe served the default chain (`*.<probe>.<domain>`, or its MX host), so that the
    DANE-TA name check (RFC 7672 §3.2.2) passes at every test's host. Probes with a chain
    of their own are left out, so that a sender that asks for them by SNI can only be
    satisfied by that chain."""
    default = [p for p in probes.CATALOGUE.values() if p.chain is None]
    return [p.tls_name(domain) for p in default] + [h for p in default if (h := p.first_mx_host(domain))]


def create(tls_dir: Path, domain: str) -> None:
    """Write the CA, both default leaves and the conformance probes' chains into tls_dir."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    ca_key = new_key("ecdsa")
    ca = make_ca(f"havedane CA for {domain}", ca_key)
    write_key(tls_dir / "ca.key", ca_key)
    (tls_dir / "ca.pem").write_bytes(pem(ca))
    write_chains(tls_dir, domain, ca, ca_key)


def write_chains(tls_dir: Path, domain: str, ca: x509.Certificate, ca_key: PrivateKey) -> None:
    """Every chain `havedane init` makes, issued by `ca`: the default leaves and the
    conformance probes' chains."""
    for kind in LEAF_KINDS:
        key = new_key(kind)
        leaf = make_leaf(default_names(domain), key, ca, ca_key)
        _write_chain(tls_dir, kind, key, [leaf, ca])
    create_probe_chains(tls_dir, domain, ca, ca_key)


def add_missing(tls_dir: Path, domain: str) -> list[str]:
    """Make the chains that are missing from tls_dir with its existing CA, so that the
    published DANE-TA (2 1 1) records still match; what is present is left alone.
    Returns the names of the chains made. Raises FileNotFoundError without the CA."""
    ca = load_ca(tls_dir)
    ca_key = serialization.load_pem_private_key((tls_dir / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{tls_dir / 'ca.key'}: not an ECDSA or RSA key")
    added = []
    # Made in full beside the old ones (the same file system, so that os.replace moves
    # them), then only the missing chains are moved: whatever chains init makes.
    with tempfile.TemporaryDirectory(prefix=".add-missing-", dir=tls_dir) as tmp:
        staging = Path(tmp)
        write_chains(staging, domain, ca, ca_key)
        for chain in sorted(staging.glob("chain-*.pem")):
            name = chain.name.removeprefix("chain-").removesuffix(".pem")
            files = [f"chain-{name}.pem", f"leaf-{name}.pem", f"leaf-{name}.key"]
            if all((tls_dir / f).exists() for f in files):
                continue
            for f in files:
                os.replace(staging / f, tls_dir / f)
            added.append(name)
    return added


def _write_chain(tls_dir: Path, name: str, key: PrivateKey, chain: list[x509.Certificate]) -> None:
    write_key(tls_dir / f"leaf-{name}.key", key)
    (tls_dir / f"leaf-{name}.pem").write_bytes(pem(chain[0]))
    (tls_dir / f"chain-{name}.pem").write_bytes(b"".join(pem(c) for c in chain))


def sibling(name: str, kind: str) -> str:
    """File name stem of a probe chain's leaf of `kind`: the ECDSA one keeps the bare name."""
    return name if kind == "ecdsa" else f"{name}-{kind}"


def create_probe_chains(tls_dir: Path, domain: str, ca: x509.Certificate, ca_key: PrivateKey) -> None:
    """The chains the conformance probes serve to senders that name them in SNI, each
    with an ECDSA and an RSA leaf (the issuing CAs stay ECDSA, as the default chain's)."""
    long_ago = _now() - datetime.timedelta(days=400)
    hosts = {c: [p.tls_name(domain) for p in probes.CATALOGUE.values() if p.chain is c] for c in probes.Chain}
    elsewhere = f"elsewhere.{domain}"  # a name no probe answers to
    rogue_key = new_key("ecdsa")
    rogue_ca = make_ca(f"havedane rogue CA for {domain}", rogue_key)
    for kind in LEAF_KINDS:
        # DANE-EE: self-signed, expired, naming another host (RFC 7672 §3.1.1 ignores all three).
        key = new_key(kind)
        ee = make_leaf(["elsewhere.invalid"], key, ca, key, days=30, not_before=long_ago, self_signed=True)
        _write_chain(tls_dir, sibling(probes.Chain.EE, kind), key, [ee])
        # DANE-TA with a leaf naming another host, and with an expired leaf.
        key = new_key(kind)
        badname = make_leaf([elsewhere], key, ca, ca_key)
        _write_chain(tls_dir, sibling(probes.Chain.BADNAME, kind), key, [badname, ca])
        key = new_key(kind)
        expired = make_leaf(hosts[probes.Chain.EXPIRED], key, ca, ca_key, days=30, not_before=long_ago)
        _write_chain(tls_dir, sibling(probes.Chain.EXPIRED, kind), key, [expired, ca])
        # A leaf from an unrelated CA, sent with that CA and our genuine (public) CA: the
        # genuine CA is in the chain, but the leaf does not chain to it (RFC 7671 §5.2.2).
        key = new_key(kind)
        rogue = make_leaf(hosts[probes.Chain.ROGUE], key, rogue_ca, rogue_key)
        _write_chain(tls_dir, sibling(probes.Chain.ROGUE, kind), key, [rogue, rogue_ca, ca])
        # Issued by our CA and sent without it: a full DANE-TA key (2 1 0) in DNS is the
        # anchor itself, so the server may leave the CA out (RFC 7671 §5.2.2).
        key = new_key(kind)
        leaf_only = make_leaf(hosts[probes.Chain.LEAF_ONLY], key, ca, ca_key)
        _write_chain(tls_dir, sibling(probes.Chain.LEAF_ONLY, kind), key, [leaf_only])


def load_chain(tls_dir: Path, name: str) -> Chain:
    chain_file = tls_dir / f"chain-{name}.pem"
    certs = x509.load_pem_x509_certificates(chain_file.read_bytes())
    return Chain(name, chain_file, tls_dir / f"leaf-{name}.key", certs[0], tuple(certs[1:]))


def load_probe_chain(tls_dir: Path, name: str) -> list[Chain]:
    """A conformance probe's chains: the ECDSA one (FileNotFoundError when missing) and
    its RSA sibling. A setup made before RSA siblings existed has none: it is served
    ECDSA only, and an RSA-only sender's failed handshake is recorded as ours."""
    chains = [load_chain(tls_dir, name)]
    if (tls_dir / f"chain-{sibling(name, 'rsa')}.pem").exists():
        chains.append(load_chain(tls_dir, sibling(name, "rsa")))
    return chains


def leaves_for(probe: probes.Probe, tls_dir: Path) -> list[x509.Certificate]:
    """The leaf certificates a sender that names `probe` in SNI is served."""
    if probe.chain is not None:
        return [c.leaf for c in load_probe_chain(tls_dir, probe.chain.value)]
    return [c.leaf for c in load_chains(tls_dir)]


def load_chains(tls_dir: Path) -> list[Chain]:
    """The default chains; raises FileNotFoundError when `havedane init` has not run."""
    return [load_chain(tls_dir, kind) for kind in LEAF_KINDS]


def load_ca(tls_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())

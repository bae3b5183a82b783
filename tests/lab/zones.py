"""Variants of the lab zone, each signed with the deployment's own key (so the DS
that `havedane zone --sign` printed still anchors them), for the checks the
published zone cannot show by itself."""

from __future__ import annotations

from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.zone

from havedane import config as configmod
from havedane import pki, zonekeys
from havedane.dns import sign, tlsa, zone


def corrupt_signature(zone_text: str, origin: str, owner: str, covered: str) -> str:
    """The zone with one bit of one RRSIG flipped: the RRSIG over (owner, covered).
    Everything else stays valid, so a validator must fail that one RRset only."""
    z = dns.zone.from_text(zone_text, origin=origin, relativize=False)
    name = dns.name.from_text(owner)
    node = z.find_node(name)
    covers = dns.rdatatype.from_text(covered)
    sigs = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covers)
    bad = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covers, sigs.ttl)
    for sig in sigs:
        flipped = sig.signature[:-1] + bytes([sig.signature[-1] ^ 0x01])
        bad.add(sig.replace(signature=flipped))
    node.replace_rdataset(bad)
    return zone.zone_text(z)


def ta_only(config_file: Path, probe: str, address: str) -> str:
    """The deployment's zone, except that `probe` publishes only DANE-TA 2 1 1 of the CA.

    OpenSSL's DANE stops at the first match and tries DANE-EE first, so with the
    published set a sender only ever reports the EE match; this shows the 2 1 1
    record matching on its own (RFC 7671 §5.2.2: the CA is in the served chain).
    """
    cfg = configmod.load(config_file, env={})
    ca = pki.load_ca(cfg.tls_dir)
    key_dir = cfg.data_dir / "dnssec"
    # Built as `havedane zone --sign` builds it (the probes' own leaves and addresses, the
    # delegations to the child zones with bogus's DS), then re-signed after the change.
    probe_leaves = {p.name: pki.leaves_for(p, cfg.tls_dir) for p in cfg.probes if p.chain is not None}
    leaves = [c.leaf for c in pki.load_chains(cfg.tls_dir)]
    keys = zonekeys.load_all(key_dir, zone.signed_zones(cfg.domain, cfg.probes))
    out = zone.build_zone(cfg.domain, cfg.probes, leaves, ca, [address], keys=keys,
                          probe_leaves=probe_leaves, probe_addresses=cfg.probe_addresses)  # fmt: skip
    z = dns.zone.from_text(out.text, origin=cfg.domain + ".", relativize=False)
    for node in z.nodes.values():
        for rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.DNSKEY):
            for covers in {r.covers for r in node.rdatasets if r.rdtype == rdtype}:
                node.delete_rdataset(dns.rdataclass.IN, rdtype, covers)
    ta = dns.rdataset.from_text("IN", "TLSA", zone.TTL, tlsa.record(tlsa.DANE_TA, ca).rdata())
    # The TLSA RRset of every test's host at the probe is the wildcard's (`havedane records`).
    z.find_node(dns.name.from_text(f"*.{probe}.{cfg.domain}.")).replace_rdataset(ta)
    sign.sign(z, zonekeys.load_or_create(key_dir, cfg.domain))
    return zone.zone_text(z)


def nsec_signed(config_file: Path, zone_text: str) -> str:
    """The zone as written, signed again with the deployment's key the way it was
    before NSEC3: dnspython's own NSEC chain (RFC 4034 §4). Only to show what NSEC3
    changes at the authoritative server."""
    cfg = configmod.load(config_file, env={})
    z = dns.zone.from_text(zone_text, origin=cfg.domain + ".", relativize=False)
    sign.sign(z, zonekeys.load_or_create(cfg.data_dir / "dnssec", cfg.domain))  # the DNSKEY, its TTL
    dnskey = z.get_rdataset(z.origin, "DNSKEY")
    for node in z.nodes.values():
        for rds in list(node.rdatasets):
            if rds.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.NSEC3, dns.rdatatype.NSEC3PARAM):
                node.delete_rdataset(dns.rdataclass.IN, rds.rdtype, rds.covers)
    for name in [n for n, node in z.nodes.items() if len(node) == 0]:
        del z.nodes[name]
    key = zonekeys.load_or_create(cfg.data_dir / "dnssec", cfg.domain)
    dns.dnssec.sign_zone(z, keys=[(key, dnskey[0])], add_dnskey=False, lifetime=86400)
    return zone.zone_text(z)

"""Variants of the lab zone, each signed with the deployment's own key (so the DS
that `havedane zone --sign` printed still anchors them), for the checks the
published zone cannot show by itself."""

from __future__ import annotations

from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.zone

from havedane import config as configmod
from havedane import pki
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
    leaves = [c.leaf for c in pki.load_chains(cfg.tls_dir)]
    ca = pki.load_ca(cfg.tls_dir)
    host = f"_25._tcp.{probe}.{cfg.domain}."
    recs = [
        r
        for r in zone.apex_records(cfg.domain, [address], serial=1)
        + zone.records(cfg.domain, cfg.probes, leaves, ca, [address])
        if not (r.name == host and r.type == "TLSA")
    ]
    recs.append(zone.Record(host, "TLSA", tlsa.record(tlsa.DANE_TA, ca).rdata()))
    z = zone.to_zone(cfg.domain, recs)
    sign.sign(z, sign.load_or_create_key(cfg.data_dir / "dnssec", cfg.domain))
    return zone.zone_text(z)

"""`havedane records` and `havedane zone`: the DNS to publish, from the configuration
and the certificates (TLSA computed from them), as records or as a zone file."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from cryptography import x509

from havedane import pki
from havedane.cli_setup import load_config, missing_certificate
from havedane.config import Config
from havedane.failure import Failure


def _addresses(config: Config, given: list[str] | None) -> list[str]:
    if given:
        for a in given:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise Failure(f"--address: not an IP address: {a!r}", 2) from None
        return given
    found = [listen.host for listen in config.smtp_listen if listen.host not in ("0.0.0.0", "::")]
    if not found:
        raise Failure("the receiver listens on all addresses: give its public address with --address IP", 2)
    return list(dict.fromkeys(found))


def _certificates(config: Config) -> tuple[list[x509.Certificate], x509.Certificate]:
    try:
        return [c.leaf for c in pki.load_chains(config.tls_dir)], pki.load_ca(config.tls_dir)
    except FileNotFoundError as e:
        raise missing_certificate(e, config) from None


def _probe_leaves(config: Config) -> dict[str, list[x509.Certificate]]:
    """What records() needs beyond the defaults: leaves of probes with chains of their
    own, and probes' own listener addresses."""
    try:
        return {p.name: pki.leaves_for(p, config.tls_dir) for p in config.probes if p.chain is not None}
    except FileNotFoundError as e:
        raise missing_certificate(e, config) from None


def cmd_records(args: argparse.Namespace) -> int:
    from havedane.dns import zone
    from havedane.probes import Zone

    config = load_config(args.config)
    leaves, ca = _certificates(config)
    addresses = _addresses(config, args.address)
    recs = zone.records(
        config.domain, config.probes, leaves, ca, addresses, _probe_leaves(config), config.probe_addresses
    )
    sys.stdout.write(zone.format_json(recs) if args.format == "json" else zone.format_zone(recs))
    children = [p.zone_apex(config.domain) for p in config.probes if p.zone is not Zone.PARENT]
    if children:
        print(
            f"havedane: {', '.join(children)} must be child zones of their own (a broken signature, an "
            "unsigned delegation), which a DNS provider cannot publish: use `havedane zone --sign` and serve "
            "the zones yourself",
            file=sys.stderr,
        )
    return 0


def cmd_zone(args: argparse.Namespace) -> int:
    from havedane import zonekeys
    from havedane.dns import zone

    if args.knot_conf and not args.out:  # Knot would be told to serve a file never written
        raise Failure("--knot-conf needs --out FILE: the Knot configuration names the zone file it serves", 2)
    config = load_config(args.config)
    leaves, ca = _certificates(config)
    probe_leaves = _probe_leaves(config)
    try:
        addresses = _addresses(config, args.address)
        key_dir = config.data_dir / "dnssec"  # read, or made on first use, only to sign
        keys = zonekeys.load_all(key_dir, zone.signed_zones(config.domain, config.probes)) if args.sign else None
        out = zone.build_zone(
            config.domain, config.probes, leaves, ca, addresses, keys=keys,
            probe_leaves=probe_leaves, probe_addresses=config.probe_addresses,
        )  # fmt: skip
    except ValueError as e:  # a bad key file (SigningKeyError), an address that is not one
        raise Failure(f"zone: {e}") from None
    if args.out:
        Path(args.out).write_text(out.text)
    else:
        sys.stdout.write(out.text)
    # Child zones (bogus, unsigned) are files of their own, next to --out (or the config).
    where = Path(args.out).parent if args.out else config.data_dir
    files = {config.domain: Path(args.out).resolve() if args.out else where / f"{config.domain}.zone"}
    for name, text in out.children.items():
        path = where / f"{name.rstrip('.')}.zone"
        path.write_text(text)
        files[name] = path.resolve()
        print(f"havedane: child zone {name.rstrip('.')} written to {path}", file=sys.stderr)
    if args.knot_conf:
        socket = args.dnstap_socket or (str(config.dnstap_socket) if config.dnstap_socket else None)
        conf = zone.knot_conf({n: str(p) for n, p in files.items()}, out.validated, dnstap_socket=socket)
        Path(args.knot_conf).write_text(conf)
        print(f"havedane: Knot configuration written to {args.knot_conf}", file=sys.stderr)
    for line in out.ds:
        print(line, file=sys.stderr)
    return 0

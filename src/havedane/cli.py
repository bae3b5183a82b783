"""The `havedane` command line.

Every command takes --config F (default ./havedane.toml, else the embedded
default's) and exits non-zero with a one-line reason on bad input: 2 for a usage
or configuration error, 1 for anything else that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from havedane import __version__, argtypes, pki
from havedane import config as configmod
from havedane.config import Config, ConfigError, Listen
from havedane.failure import Failure
from havedane.setupdir import add_missing, init
from havedane.store import Store, open_store

if TYPE_CHECKING:
    from havedane.dnstap import Reader

EMBEDDED_DOMAIN = "havedane.localhost"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "havedane"


def config_path(arg: str | None) -> Path | None:
    """--config, else ./havedane.toml, else the embedded default's file (if it exists)."""
    if arg:
        return Path(arg)
    if Path("havedane.toml").exists():
        return Path("havedane.toml")
    embedded = default_data_dir() / "havedane.toml"
    return embedded if embedded.exists() else None


def load_config(arg: str | None) -> Config:
    path = config_path(arg)
    if path is None:
        raise Failure("no havedane.toml here: run `havedane init --domain D` or pass --config F", 2)
    try:
        return configmod.load(path)
    except ConfigError as e:
        raise Failure(f"config: {e}", 2) from None


# -- init ---------------------------------------------------------------------


def missing_certificate(e: FileNotFoundError, config: Config) -> Failure:
    where = f" --config {config.path}" if config.path else ""
    return Failure(f"certificates missing ({e.filename}): run `havedane init --add-missing{where}`", 2)


def cmd_init(args: argparse.Namespace) -> int:
    if args.add_missing:
        if args.force:
            raise Failure("--add-missing keeps the setup, --force replaces it: give one of them", 2)
        add_missing(Path(args.config) if args.config else Path(args.dir) / "havedane.toml")
        return 0
    if not args.domain:
        raise Failure("init: --domain is required (or --add-missing, to complete an existing setup)", 2)
    path = init(args.domain, Path(args.dir), args.force)
    print(f"wrote {path}, certificates in {path.parent / 'tls'}, database {path.parent / 'havedane.sqlite3'}")
    print(f"next: havedane records --config {path} --address <public IP>   (DNS to publish)")
    print(f"      havedane serve --config {path}")
    return 0


# -- serve --------------------------------------------------------------------


def embedded_config() -> Path:
    """The embedded default for a local trial: created on first use, reused after."""
    directory = default_data_dir()
    path = directory / "havedane.toml"
    if not path.exists():
        init(EMBEDDED_DOMAIN, directory, force=False)
        print(f"havedane: created a trial setup for {EMBEDDED_DOMAIN} in {directory}", flush=True)
    return path


def _listen(value: str) -> Listen:
    try:
        return configmod.parse_listen(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


ROLES = ("all", "smtp", "web", "dns")


async def _until(stop: asyncio.Event) -> None:
    await stop.wait()


async def serve(
    config: Config, smtp: tuple[Listen, ...], web: Listen, ready: Callable[[str], None] = print, role: str = "all"
) -> None:
    from havedane.receiver import Receiver, probe_contexts
    from havedane.web.app import create_app, serve_forever

    if role == "dns":
        return await serve_dns(config, ready)
    try:
        pki.load_chains(config.tls_dir)  # before anything starts: a missing file is one clear line
    except FileNotFoundError as e:
        raise missing_certificate(e, config) from None
    store, stop = await open_for_serving(config)
    try:
        context = probe_contexts(config)
    except FileNotFoundError as e:
        raise missing_certificate(e, config) from None
    receiver = Receiver(config, store, context)
    dnstap = await start_dnstap(config, store) if role == "all" and config.dnstap_socket else None
    try:
        if role != "web":
            try:
                await receiver.start(smtp)
            except OSError as e:
                raise Failure(f"cannot listen for SMTP on {', '.join(map(str, smtp))}: {e.strerror or e}") from None
        web_ready = asyncio.Event()
        if role == "smtp":  # a receiver only: runs until stopped
            web_ready.set()
            web_task = asyncio.create_task(_until(stop))
        else:
            web_task = asyncio.create_task(
                serve_forever(
                    create_app(config, store), web.host, web.port, stop, web_ready, config.stream_send_timeout
                )
            )
        prune_task = asyncio.create_task(prune_forever(config, store))
        ready_wait = asyncio.create_task(web_ready.wait())
        await asyncio.wait({web_task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        if web_task.done():
            ready_wait.cancel()
            prune_task.cancel()
            exc = web_task.exception()
            raise Failure(f"cannot listen for HTTP on {web}: {getattr(exc, 'strerror', None) or exc}")
        smtp_at = ", ".join(f"{h}:{p}" for h, p in receiver.bound())
        parts = [f"domain {config.domain}"]
        parts += [f"SMTP on {smtp_at}"] if role != "web" else []
        parts += [f"web on http://{web} (open it in a browser)"] if role != "smtp" else []
        parts += [f"dnstap on {config.dnstap_socket}"] if dnstap else []
        ready(f"havedane {__version__}: {'; '.join(parts)}")
        await web_task
        prune_task.cancel()
    finally:
        await receiver.stop()
        if dnstap is not None:
            await dnstap.stop()
        await store.close()


async def start_dnstap(config: Config, store: Store) -> Reader:
    from havedane.dnstap import reader_for

    reader = reader_for(config, store)
    try:
        await reader.start()
    except OSError as e:
        await store.close()
        raise Failure(f"cannot listen for dnstap on {config.dnstap_socket}: {e.strerror or e}") from None
    return reader


async def open_for_serving(config: Config) -> tuple[Store, asyncio.Event]:
    """The open store, and the event SIGTERM/SIGINT set: what every role of `serve` needs."""
    store = open_store(config.store_url, config.store_busy_timeout, config.store_write_timeout)
    try:
        await store.open()
    except Exception as e:  # noqa: BLE001 - reported as one line
        raise Failure(f"cannot open the store {config.store_url}: {e}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return store, stop


async def serve_dns(config: Config, ready: Callable[[str], None]) -> None:
    """`serve --role dns`: the dnstap reader next to one Knot, writing to the shared store."""
    if config.dnstap_socket is None:
        raise Failure("serve --role dns needs [dns] dnstap_socket (the socket Knot's mod-dnstap writes to)", 2)
    store, stop = await open_for_serving(config)
    reader = await start_dnstap(config, store)
    try:
        ready(f"havedane {__version__}: domain {config.domain}; dnstap on {config.dnstap_socket}")
        await stop.wait()
    finally:
        await reader.stop()
        await store.close()


async def prune_forever(config: Config, store: Store) -> None:
    """Retention ([retention] in README): at start, then every 10 minutes."""
    while True:
        now = time.time()
        keep = config.retention_days * 86400
        try:
            await store.prune(now - keep, now - min(keep, 86400), config.max_orphan_sessions)
            await store.prune_dns(now - min(keep, 86400), config.max_zone_queries)
        except Exception as e:  # noqa: BLE001 - pruning must never stop the service
            logging.getLogger("havedane").error("pruning failed: %s", e)
        await asyncio.sleep(600)


def cmd_serve(args: argparse.Namespace) -> int:
    path = config_path(args.config) or embedded_config()
    try:
        config = configmod.load(path)
    except ConfigError as e:
        raise Failure(f"config: {e}", 2) from None
    smtp = tuple(args.smtp_listen) if args.smtp_listen else config.smtp_listen
    web = args.web_listen or config.web_listen
    if (
        args.web_listen
        and "public_url" not in config.raw.get("web", {})
        and "HAVEDANE_WEB_PUBLIC_URL" not in os.environ
    ):
        config = dataclasses.replace(config, public_url=f"http://{web}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter

    def ready(line: str) -> None:
        print(line, flush=True)

    try:
        import uvloop  # installed with uvicorn[standard]: a faster event loop for SMTP and HTTP alike
    except ImportError:
        asyncio.run(serve(config, smtp, web, ready, args.role))
    else:
        uvloop.run(serve(config, smtp, web, ready, args.role))
    return 0


# -- records / zone -------------------------------------------------------------


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
    children = [p.base(config.domain) for p in config.probes if p.zone is not Zone.PARENT]
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


# -- check / deliver / postfix-config ---------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from havedane import check

    config = load_config(args.config)
    resolver = args.resolver or check.system_resolver()
    failed = 0
    print(f"checking {config.domain} through the validating resolver {resolver}")
    for result in check.check(config, resolver, args.smtp_port):
        print(result.line(), flush=True)
        failed += not result.ok
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 0 if not failed else 1


def cmd_deliver(args: argparse.Namespace) -> int:
    from havedane import postfix, wiretext

    try:
        config = load_config(args.config)
    except Failure as e:
        print(f"havedane deliver: {e}", file=sys.stderr)
        return postfix.EX_CONFIG
    try:
        store = open_store(config.store_url, config.store_busy_timeout, config.store_write_timeout)
        # Postfix passes the sender and HELO as the client sent them: 8-bit, not always UTF-8.
        utf8 = wiretext.clean_optional
        code, reason = postfix.deliver(
            config, store, utf8(args.sender) or "", utf8(args.recipient) or "", args.client_address,
            utf8(args.client_helo), sys.stdin.buffer,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - pipe(8) bounces on 1: a failure of ours must defer instead
        what = " ".join(str(e).split())  # one line for Postfix's log
        code, reason = postfix.EX_TEMPFAIL, f"unexpected error, Postfix will retry: {type(e).__name__}: {what}"
    # pipe(8) shows what a failed command printed in the bounce or the log.
    print(f"havedane deliver: {reason}", file=sys.stderr if code else sys.stdout)
    return code


def cmd_postfix_config(args: argparse.Namespace) -> int:
    from havedane import postfix

    config = load_config(args.config)
    assert config.path is not None
    sys.stdout.write(postfix.snippets(config, args.havedane, config.path.resolve(), args.user))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from havedane.store import StoreError, upgrade

    config = load_config(args.config)
    try:
        before, after = upgrade(config.store_url, config.store_busy_timeout)
    except StoreError as e:
        raise Failure(str(e)) from None
    print(f"schema version {before} -> {after}" if before != after else f"schema is current (version {after})")
    return 0


# -- the parser ---------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argtypes.Parser(prog="havedane", description="Tells whether outgoing mail servers validate DANE (RFC 7672).")
    p.add_argument("--version", action="version", version=f"havedane {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--config", metavar="F", help="configuration file (default ./havedane.toml)")
        c.set_defaults(func=func)
        return c

    c = command("init", "write havedane.toml, the CA and certificates, and the database", cmd_init)
    c.add_argument("--domain", type=argtypes.domain_arg,
                   help="the DNSSEC-signed base domain, e.g. havedane.example")  # fmt: skip
    c.add_argument("--dir", default=".", help="where to write (default: the current directory)")
    c.add_argument(
        "--force",
        action="store_true",
        help="replace an existing setup: new configuration and CA (republish the DNS); the database is kept",
    )
    c.add_argument(
        "--add-missing",
        action="store_true",
        help="complete an existing setup: make missing certificates with its CA, keep everything else",
    )

    c = command("serve", "run the SMTP receiver and the web app in one process", cmd_serve)
    c.add_argument("--smtp-listen", action="append", type=_listen, metavar="ADDR:PORT",
                   help="SMTP listener (repeat for several; overrides [smtp] listen)")  # fmt: skip
    c.add_argument("--web-listen", type=_listen, metavar="ADDR:PORT", help="web listener (overrides [web] listen)")
    c.add_argument("--role", choices=ROLES, default="all",
                   help="all (default): receiver and web (and the dnstap reader when [dns] dnstap_socket is "
                        "set); smtp: the receiver only; web: the web app only; dns: the dnstap reader only "
                        "(processes with different roles share one database: docs/scaling.md)")  # fmt: skip

    c = command("records", "print the DNS records to publish (TLSA computed from the certificates)", cmd_records)
    c.add_argument("--format", choices=["zone", "json"], default="zone", help="output format (default zone)")
    c.add_argument("--address", action="append", metavar="IP", help="the receiver's public address (repeatable)")

    c = command("zone", "print a complete zone file for the base domain (--sign: signed, DS on stderr)", cmd_zone)
    c.add_argument("--sign", action="store_true", help="sign the zone (ECDSA P-256, NSEC3); keys in DIR/dnssec")
    c.add_argument("--address", action="append", metavar="IP", help="the receiver's public address (repeatable)")
    c.add_argument(
        "--out", metavar="FILE", type=argtypes.output_file, help="write the zone here instead of standard output"
    )
    c.add_argument("--knot-conf", metavar="FILE", type=argtypes.output_file,
                   help="also write a Knot DNS configuration serving the zones (needs --out)")  # fmt: skip
    c.add_argument("--dnstap-socket", metavar="PATH",
                   help="in --knot-conf, stream queries to havedane's dnstap reader at PATH "
                        "(default: [dns] dnstap_socket; none when empty)")  # fmt: skip

    c = command(
        "check", "verify the live deployment from outside: DNSSEC, TLSA vs served certificates, SMTP, web", cmd_check
    )
    c.add_argument("--resolver", metavar="IP", type=argtypes.ip,
                   help="validating resolver to ask (default: the first in /etc/resolv.conf)")  # fmt: skip
    c.add_argument("--smtp-port", type=argtypes.port, default=25, metavar="PORT",
                   help="SMTP port of the probe hosts (default 25)")  # fmt: skip

    c = command("deliver", "Postfix pipe mode: record one message from stdin, envelope from argv", cmd_deliver)
    c.add_argument("--sender", required=True, help="Postfix ${sender}")
    c.add_argument("--recipient", required=True, help="Postfix ${recipient} (one per call)")
    c.add_argument("--client-address", type=argtypes.client_address, help="Postfix ${client_address}")
    c.add_argument("--client-helo", help="Postfix ${client_helo}")

    c = command(
        "postfix-config", "print main.cf/master.cf/transport snippets for the Postfix bridge", cmd_postfix_config
    )
    c.add_argument("--havedane", default=shutil.which("havedane") or "/usr/local/bin/havedane",
                   help="path of the havedane command Postfix runs")  # fmt: skip
    c.add_argument("--user", default="havedane", type=argtypes.user, help="user the pipe runs as (default havedane)")

    db = sub.add_parser("db", help="database maintenance", description="database maintenance")
    dbsub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    c = dbsub.add_parser("upgrade", help="apply schema migrations", description="apply schema migrations")
    c.add_argument("--config", metavar="F", help="configuration file (default ./havedane.toml)")
    c.set_defaults(func=cmd_db_upgrade)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except Failure as e:
        print(f"havedane: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `havedane` command line: its arguments, and `main`.

Every command takes --config F (default ./havedane.toml, else the embedded
default's) and exits non-zero with a one-line reason on bad input: 2 for a usage
or configuration error, 1 for anything else that failed. The commands are in
cli_setup (init), cli_serve, cli_dns (records, zone) and cli_ops (check, deliver,
postfix-config, db upgrade).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence

from havedane import __version__, argtypes
from havedane.cli_dns import cmd_records, cmd_zone
from havedane.cli_ops import cmd_check, cmd_db_upgrade, cmd_deliver, cmd_postfix_config
from havedane.cli_serve import ROLES, cmd_serve
from havedane.cli_setup import cmd_init
from havedane.failure import Failure
from havedane.probeclient import DEFAULT_TIMEOUT, cmd_probe

Command = Callable[[str, str, Callable[[argparse.Namespace], int]], argparse.ArgumentParser]


def parser() -> argparse.ArgumentParser:
    p = argtypes.Parser(prog="havedane", description="Tells whether outgoing mail servers validate DANE (RFC 7672).")
    p.add_argument("--version", action="version", version=f"havedane {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--config", metavar="F", help="configuration file (default ./havedane.toml)")
        c.set_defaults(func=func)
        return c

    for group in (_setup_commands, _serve_commands, _dns_commands, _ops_commands, _probe_commands):
        group(command)
    db = sub.add_parser("db", help="database maintenance", description="database maintenance")
    dbsub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    c = dbsub.add_parser("upgrade", help="apply schema migrations", description="apply schema migrations")
    c.add_argument("--config", metavar="F", help="configuration file (default ./havedane.toml)")
    c.set_defaults(func=cmd_db_upgrade)
    return p


def _setup_commands(command: Command) -> None:
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


def _serve_commands(command: Command) -> None:
    c = command("serve", "run the SMTP receiver and the web app in one process", cmd_serve)
    c.add_argument("--smtp-listen", action="append", type=argtypes.listen, metavar="ADDR:PORT",
                   help="SMTP listener (repeat for several; overrides [smtp] listen)")  # fmt: skip
    c.add_argument(
        "--web-listen", type=argtypes.listen, metavar="ADDR:PORT", help="web listener (overrides [web] listen)"
    )
    c.add_argument("--role", choices=ROLES, default="all",
                   help="all (default): receiver and web (and the dnstap reader when [dns] dnstap_socket is "
                        "set); smtp: the receiver only; web: the web app only; dns: the dnstap reader only "
                        "(processes with different roles share one database: docs/scaling.md)")  # fmt: skip


def _dns_commands(command: Command) -> None:
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


def _ops_commands(command: Command) -> None:
    c = command(
        "check", "verify the live deployment from outside: DNSSEC, TLSA vs served certificates, SMTP, web", cmd_check
    )
    c.add_argument("--resolver", metavar="IP[:PORT]", type=argtypes.resolver,
                   help="validating resolver to ask (default: the first in /etc/resolv.conf, port 53)")  # fmt: skip
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


def _probe_commands(command: Command) -> None:
    c = command("probe", "test your own MTA against a havedane server; exit 0 OK, 1 WARNING, 2 CRITICAL, "
                "3 UNKNOWN (Monitoring Plugins)", cmd_probe)  # fmt: skip
    c.add_argument("--server", required=True, metavar="URL", help="the havedane server, e.g. https://havedane.example")
    via = c.add_mutually_exclusive_group()
    via.add_argument("--sendmail", default="sendmail", metavar="PATH",
                     help="the MTA's sendmail, run as PATH -oi -f FROM -- RCPT... (default sendmail)")  # fmt: skip
    via.add_argument("--smtp", type=argtypes.listen, metavar="HOST:PORT",
                     help="hand the message to this SMTP relay instead of sendmail")  # fmt: skip
    c.add_argument("--from", dest="sender", metavar="ADDR", help="envelope and From: address (default postmaster@FQDN)")
    c.add_argument("--timeout", type=argtypes.seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"bound on the whole run; pending then: UNKNOWN (default {DEFAULT_TIMEOUT:.0f})")  # fmt: skip
    c.add_argument("--json", action="store_true", help="print the API's JSON for the test instead of the report")


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

"""The commands that run beside a deployment: `check` (from outside), `deliver` and
`postfix-config` (the Postfix bridge), `db upgrade`."""

from __future__ import annotations

import argparse
import sys

from havedane.cli_setup import load_config
from havedane.failure import Failure
from havedane.store import open_store


def cmd_check(args: argparse.Namespace) -> int:
    from havedane import check

    config = load_config(args.config)
    resolver = args.resolver or check.system_resolver()
    failed = warned = 0
    print(f"checking {config.domain} through the validating resolver {resolver}")
    for result in check.check(config, resolver, args.smtp_port):
        print(result.line(), flush=True)
        failed += not result.ok
        warned += result.warn
    # A warning (a signature expiring within a week) does not fail the check: all works today.
    also = f", {warned} warning(s)" if warned else ""
    print(f"all checks passed{also}" if not failed else f"{failed} check(s) failed{also}")
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
    from havedane.store import DriverMissing, StoreError, upgrade

    config = load_config(args.config)
    try:
        before, after = upgrade(config.store_url, config.store_busy_timeout)
    except DriverMissing as e:
        raise Failure(str(e), 2) from None
    except StoreError as e:
        raise Failure(str(e)) from None
    print(f"schema version {before} -> {after}" if before != after else f"schema is current (version {after})")
    return 0

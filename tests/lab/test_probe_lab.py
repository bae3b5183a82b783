"""`havedane probe --sendmail` through each lab Postfix, against the lab's `havedane serve`:
the DANE-validating one is OK (exit 0), the one that does not validate is CRITICAL (exit 2).

The probe runs in the lab's namespace (the web app is on its loopback) and hands the
message to the instance's own sendmail (`-C` its configuration directory), as an
administrator's cron job would on the MTA's host."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from . import world
from .postfix import Postfix

pytestmark = pytest.mark.lab


def probe(lab: world.World, sender: Postfix) -> subprocess.CompletedProcess[str]:
    # The instance's sendmail: Postfix's own, pointed at this instance's main.cf.
    sendmail = lab.dir / f"sendmail-{sender.name}"
    sendmail.write_text(f'#!/bin/sh\nexec /usr/sbin/sendmail -C {sender.dir} "$@"\n')
    os.chmod(sendmail, 0o755)
    server = f"http://{world.WEB[0]}:{world.WEB[1]}"
    argv = [
        sys.executable, "-m", "havedane", "probe", "--server", server, "--sendmail", str(sendmail),
        "--from", f"postmaster@{sender.name}.sender.test", "--timeout", "60",
    ]  # fmt: skip
    try:
        done = lab.ns.run(argv, timeout=90, check=False)
        print(done.stdout, done.stderr)
        return done
    finally:
        sender.delete_deferred()


def test_probe_through_the_dane_postfix_is_ok(lab: world.World) -> None:
    done = probe(lab, lab.dane)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("DANE OK - validates: "), done.stdout
    assert done.stdout.count("\n") > 3  # a line per probe follows (the conformance matrix is on)


def test_probe_through_the_plain_postfix_is_critical(lab: world.World) -> None:
    done = probe(lab, lab.plain)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith("DANE CRITICAL - does-not-validate: "), done.stdout


def test_probe_against_a_server_that_is_down_is_unknown_within_its_timeout(lab: world.World) -> None:
    down = f"http://{world.WEB[0]}:{world.WEB[1] + 1}"  # nothing listens there in the lab
    sendmail = lab.dir / "sendmail-never"  # never reached: the test is not even created
    argv = [sys.executable, "-m", "havedane", "probe", "--server", down, "--sendmail", str(sendmail), "--timeout", "5"]
    start = time.monotonic()
    done = lab.ns.run(argv, timeout=30, check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith(f"DANE UNKNOWN - POST {down}/api/tests: "), done.stdout
    assert time.monotonic() - start < 5 + 3  # the timeout, and the interpreter's start-up

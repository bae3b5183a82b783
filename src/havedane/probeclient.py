"""`havedane probe`: a client for any havedane server, for cron and Icinga/Nagios.

It creates a test (POST /api/tests), hands one message for all the test's addresses to
the administrator's own MTA (its `sendmail`, or an SMTP relay), follows the result
(GET /api/tests/{alias}, polled) until the verdict is no longer pending, and prints it.

The exit status follows the Monitoring Plugins convention (0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN), derived from the verdict's code alone (`status_of`): the
mapping is data, in one place, keyed by `verdict.Code`.
"""

from __future__ import annotations

import enum
import json
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, TextIO

import httpx

from havedane.config_keys import Listen
from havedane.verdict import Code

POLL_INTERVAL = 2.0  # seconds between two GET /api/tests/{alias}
DEFAULT_TIMEOUT = 900.0  # 15 minutes: a sender's first retry, and the server's grace, fit in it


class Status(enum.IntEnum):
    """The Monitoring Plugins' service states, as exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# The verdict's code -> the service state. Pending here means the wait timed out.
STATUS: Mapping[Code, Status] = {
    Code.VALIDATES: Status.OK,
    Code.VALIDATES_WITH_FLAWS: Status.WARNING,  # a matrix probe failed, the classic verdict holds
    Code.DOES_NOT_VALIDATE: Status.CRITICAL,
    Code.NO_TLS: Status.CRITICAL,
    Code.INCOMPLETE: Status.UNKNOWN,
    Code.PENDING: Status.UNKNOWN,
}


def status_of(code: str) -> Status:
    """The state for a verdict code from the API; a code this client does not know is UNKNOWN."""
    try:
        return STATUS[Code(code)]
    except ValueError:
        return Status.UNKNOWN


def report_lines(state: Mapping[str, Any], timed_out: bool = False) -> list[str]:
    """The human report: a `DANE OK - …` first line for monitoring, then one line per probe."""
    verdict = state["verdict"]
    status = status_of(verdict["code"])
    waited = " (timed out waiting)" if timed_out and verdict["code"] == Code.PENDING else ""
    lines = [f"DANE {status.name} - {verdict['code']}{waited}: {verdict['headline']} | test {state['url']}"]
    if verdict.get("summary"):
        lines.append(verdict["summary"])
    for name, probe in state["probes"].items():
        grade = probe["grade"]
        lines.append(f"  {name:<16} {probe['status']:<14} {grade['grade']:<13} {grade['reason']}")
    return lines


def failure_lines(message: str) -> list[str]:
    return [f"DANE {Status.UNKNOWN.name} - {message}"]


def progress_line(state: Mapping[str, Any], elapsed: float) -> str:
    probes = state["probes"]
    arrived = sum(1 for p in probes.values() if p["status"] != "pending")
    return f"{state['alias']}: {state['verdict']['code']}, {arrived} of {len(probes)} probes settled ({elapsed:.0f} s)"


class ProbeError(Exception):
    """Something kept the probe from a verdict: UNKNOWN, with this one-line reason."""


@dataclass(frozen=True)
class Options:
    server: str
    sender: str
    sendmail: str = "sendmail"
    smtp: Listen | None = None
    timeout: float = DEFAULT_TIMEOUT
    json: bool = False
    interval: float = POLL_INTERVAL


def compose(sender: str, state: Mapping[str, Any]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(state["addresses"].values())
    msg["Subject"] = f"havedane probe {state['alias']}"
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(f"A DANE test message from havedane probe; the result: {state['url']}\n")
    return msg


def send_sendmail(path: str, sender: str, rcpts: Sequence[str], msg: EmailMessage, timeout: float) -> None:
    """The MTA's own submission command; `-oi`: a line with a lone dot does not end the message."""
    argv = [path, "-oi", "-f", sender, "--", *rcpts]
    try:
        proc = subprocess.run(argv, input=msg.as_bytes(), capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProbeError(f"{path} could not be run: {e}") from None
    if proc.returncode != 0:
        said = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ProbeError(f"{path} exited {proc.returncode}" + (f": {said[-1]}" if said else ""))


def send_smtp(relay: Listen, sender: str, rcpts: Sequence[str], msg: EmailMessage, timeout: float) -> None:
    try:
        with smtplib.SMTP(relay.host, relay.port, timeout=timeout) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                # Opportunistic, unauthenticated TLS to the relay (RFC 7435): the hop is the
                # administrator's own; what is tested is the relay's DANE, further on.
                smtp.starttls(context=_opportunistic())
                smtp.ehlo()
            refused = smtp.send_message(msg, from_addr=sender, to_addrs=list(rcpts))
    except (OSError, smtplib.SMTPException) as e:
        raise ProbeError(f"SMTP relay {relay} did not take the message: {e}") from None
    if refused:
        # A relay that refuses some addresses: the verdict would be about the relay.
        raise ProbeError(f"SMTP relay {relay} refused {', '.join(sorted(refused))}")


def _opportunistic() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _api(client: httpx.Client, method: str, path: str, expect: int, deadline: float) -> dict[str, Any]:
    """One request, given only the time left before the run's deadline."""
    try:
        r = client.request(method, path, timeout=max(0.1, deadline - time.monotonic()))
    except httpx.HTTPError as e:
        raise ProbeError(f"{method} {client.base_url}{path}: {e or type(e).__name__}") from None
    if r.status_code != expect:
        raise ProbeError(f"{method} {client.base_url}{path}: HTTP {r.status_code} {r.text[:200].strip()}")
    try:
        body: dict[str, Any] = r.json()
    except ValueError:
        raise ProbeError(f"{method} {client.base_url}{path}: not JSON") from None
    return body


def follow(
    client: httpx.Client, alias: str, deadline: float, interval: float, show: Callable[[dict[str, Any]], None]
) -> tuple[dict[str, Any], bool]:
    """Poll until the verdict is not pending or the deadline passes: (last state, timed out).
    A failed request is retried until the deadline, then reported."""
    state: dict[str, Any] | None = None
    error: ProbeError | None = None
    while True:
        try:
            state = _api(client, "GET", f"/api/tests/{alias}", 200, deadline)
            error = None
            show(state)
            if state["verdict"]["code"] != Code.PENDING:
                return state, False
        except ProbeError as e:
            error = e
        left = deadline - time.monotonic()
        if left <= 0:
            if state is None or error is not None:
                raise error or ProbeError(f"no answer for test {alias}")
            return state, True
        time.sleep(min(interval, left))


class Progress:
    """One line rewritten in place on a terminal; nothing otherwise."""

    def __init__(self, out: TextIO, start: float) -> None:
        self.out, self.start = out, start
        self.on = out.isatty()

    def __call__(self, state: dict[str, Any]) -> None:
        if self.on:
            self.out.write("\r\x1b[K" + progress_line(state, time.monotonic() - self.start))
            self.out.flush()

    def clear(self) -> None:
        if self.on:
            self.out.write("\r\x1b[K")
            self.out.flush()


def probe(opts: Options, out: TextIO) -> tuple[dict[str, Any], bool]:
    """Create, send, follow: the final state and whether the wait timed out."""
    start = time.monotonic()
    deadline = start + opts.timeout
    progress = Progress(out, start)
    with httpx.Client(base_url=opts.server.rstrip("/")) as client:
        test = _api(client, "POST", "/api/tests", 201, deadline)
        rcpts = list(test["addresses"].values())
        msg = compose(opts.sender, test)
        remaining = max(0.1, deadline - time.monotonic())
        if opts.smtp is not None:
            send_smtp(opts.smtp, opts.sender, rcpts, msg, remaining)
        else:
            send_sendmail(opts.sendmail, opts.sender, rcpts, msg, remaining)
        try:
            return follow(client, test["alias"], deadline, opts.interval, progress)
        finally:
            progress.clear()


def run(opts: Options, out: TextIO | None = None) -> int:
    """The whole command: its output on `out` (standard output), its exit status returned."""
    out = out or sys.stdout
    try:
        state, timed_out = probe(opts, out)
    except ProbeError as e:
        if opts.json:
            out.write(json.dumps({"error": str(e), "status": Status.UNKNOWN.name}) + "\n")
        else:
            out.write("\n".join(failure_lines(str(e))) + "\n")
        return Status.UNKNOWN
    if opts.json:
        out.write(json.dumps(state, indent=2) + "\n")
    else:
        out.write("\n".join(report_lines(state, timed_out)) + "\n")
    return status_of(state["verdict"]["code"])


def default_sender() -> str:
    return f"postmaster@{socket.getfqdn()}"


def cmd_probe(args: Any) -> int:
    """`havedane probe` (argparse's namespace from cli.py)."""
    opts = Options(
        server=args.server,
        sender=args.sender or default_sender(),
        sendmail=args.sendmail,
        smtp=args.smtp,
        timeout=args.timeout,
        json=args.json,
    )
    return run(opts)

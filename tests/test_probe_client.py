"""`havedane probe`: the exit status from the verdict, the report, and whole runs against a
real `havedane serve` (in process), a real sendmail-like program, and servers that are down."""

from __future__ import annotations

import io
import json
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from havedane import cli
from havedane.probeclient import STATUS, Options, Status, report_lines, run, status_of
from havedane.verdict import Code
from helpers import free_port
from inprocess import InProcess


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [("validates", 0), ("validates-with-flaws", 1), ("does-not-validate", 2), ("no-tls", 2),
     ("incomplete", 3), ("pending", 3), ("something-new", 3)],
)  # fmt: skip
def test_exit_status_follows_the_monitoring_plugins_convention(code: str, exit_code: int) -> None:
    assert status_of(code) == exit_code


def test_every_verdict_code_has_a_state() -> None:
    assert set(STATUS) == set(Code)


def state(code: str, headline: str = "Your server validates DANE") -> dict[str, Any]:
    grade = {"grade": "pass", "reason": "It delivered over TLS."}
    probe = {"status": "delivered", "grade": grade}
    return {
        "alias": "abc",
        "url": "https://havedane.example/t/abc",
        "addresses": {"do": "test@abc.do.havedane.example"},
        "probes": {"do": probe, "wrong": {"status": "refused", "grade": grade}},
        "verdict": {"code": code, "headline": headline, "summary": "Summary."},
    }


def test_the_report_starts_with_a_monitoring_line_then_one_line_per_probe() -> None:
    lines = report_lines(state("validates"))
    assert lines[0] == "DANE OK - validates: Your server validates DANE | test https://havedane.example/t/abc"
    assert lines[1] == "Summary."
    assert lines[2].split()[:3] == ["do", "delivered", "pass"]
    assert lines[3].split()[:3] == ["wrong", "refused", "pass"]
    assert report_lines(state("no-tls"))[0].startswith("DANE CRITICAL - no-tls: ")
    assert report_lines(state("pending"), timed_out=True)[0].startswith("DANE UNKNOWN - pending (timed out waiting): ")


def probe(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, float]:
    start = time.monotonic()
    code = cli.main(["probe", *args])
    return code, capsys.readouterr().out, time.monotonic() - start


def test_direct_delivery_to_every_address_does_not_validate(
    serve: InProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--smtp` straight to the receiver: no DANE check at all, so `wrong` gets the mail too."""
    smtp = f"127.0.0.1:{serve.smtp_port}"
    code, out, _ = probe("--server", serve.web, "--smtp", smtp, "--timeout", "60", capsys=capsys)
    assert code == 2, out
    first, *rest = out.splitlines()
    assert first.startswith("DANE CRITICAL - does-not-validate: "), out
    assert "\r" not in out  # no progress display when stdout is not a terminal
    assert {line.split()[0] for line in rest if line.startswith("  ")} == {"do", "dont", "wrong"}
    assert any(line.split()[:2] == ["wrong", "delivered"] for line in rest), out


def test_json_is_the_apis_json_of_the_test(serve: InProcess, capsys: pytest.CaptureFixture[str]) -> None:
    smtp = f"127.0.0.1:{serve.smtp_port}"
    code, out, _ = probe("--server", serve.web, "--smtp", smtp, "--timeout", "60", "--json", capsys=capsys)
    assert code == 2, out
    body = json.loads(out)
    status, api, _ = serve.request("GET", f"/api/tests/{body['alias']}")
    assert status == 200 and body["verdict"]["code"] == api["verdict"]["code"] == "does-not-validate"
    assert body["probes"].keys() == api["probes"].keys()


def fake_sendmail(tmp_path: Path, exit_code: int) -> Path:
    """A sendmail that keeps what it was given and delivers nothing."""
    script = tmp_path / "sendmail"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\ncat > {tmp_path}/message\n'
        f'echo "sendmail: queue is full" >&2\nexit {exit_code}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_sendmail_gets_the_envelope_and_nothing_arriving_is_unknown_at_the_timeout(
    serve: InProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sendmail = fake_sendmail(tmp_path, 0)
    args = ("--server", serve.web, "--sendmail", str(sendmail), "--from", "admin@mx.example", "--timeout", "3")
    code, out, took = probe(*args, capsys=capsys)
    assert code == 3 and out.startswith("DANE UNKNOWN - pending (timed out waiting): "), out
    assert took < 6
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:4] == ["-oi", "-f", "admin@mx.example", "--"]
    assert {a.split("@")[1].split(".")[1] for a in argv[4:]} == {"do", "dont", "wrong"}
    message = (tmp_path / "message").read_text()
    assert "From: admin@mx.example" in message and all(a in message for a in argv[4:])


def test_a_failing_sendmail_is_unknown_with_its_reason(
    serve: InProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sendmail = fake_sendmail(tmp_path, 75)
    code, out, _ = probe("--server", serve.web, "--sendmail", str(sendmail), capsys=capsys)
    assert code == 3
    assert out == f"DANE UNKNOWN - {sendmail} exited 75: sendmail: queue is full\n"


def test_a_server_that_is_down_is_unknown_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    code, out, took = probe("--server", server, "--smtp", "127.0.0.1:1", "--timeout", "5", capsys=capsys)
    assert code == 3 and out.startswith(f"DANE UNKNOWN - POST {server}/api/tests: "), out
    assert took < 5


def test_a_server_that_never_answers_is_unknown_within_the_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        server = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code, out, took = probe("--server", server, "--smtp", "127.0.0.1:1", "--timeout", "2", capsys=capsys)
    assert code == 3 and out.startswith("DANE UNKNOWN - "), out
    assert 1.5 < took < 4


def test_progress_is_shown_on_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    from havedane.probeclient import Progress

    plain, tty = io.StringIO(), Terminal()
    for out in (plain, tty):
        show = Progress(out, time.monotonic())
        show(state("pending"))
        show.clear()
    assert plain.getvalue() == ""
    assert "abc: pending, 2 of 2 probes settled" in tty.getvalue() and tty.getvalue().endswith("\r\x1b[K")


def test_run_reports_unknown_as_json_too() -> None:
    out = io.StringIO()
    opts = Options(server=f"http://127.0.0.1:{free_port()}", sender="a@b.example", timeout=2, json=True)
    assert run(opts, out) == Status.UNKNOWN
    assert json.loads(out.getvalue())["status"] == "UNKNOWN"

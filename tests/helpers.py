"""Shared test utilities: a real `havedane serve` process, free ports, a real SMTP client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from havedane import setupdir


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def make_setup(directory: Path, domain: str = "x.test") -> Path:
    """`havedane init` into `directory`; returns the config path."""
    return setupdir.init(domain, directory, force=False)


@dataclass
class Serve:
    """A real `havedane serve` subprocess on ephemeral loopback ports."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)
    smtp_port: int = 0
    web_port: int = 0
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, timeout: float = 20) -> Serve:
        self.smtp_port = self.smtp_port or free_port()
        self.web_port = self.web_port or free_port()
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "havedane", "serve", "--config", str(self.config),
             "--smtp-listen", f"127.0.0.1:{self.smtp_port}", "--web-listen", f"127.0.0.1:{self.web_port}",
             *self.extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        ready = threading.Event()
        started = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if line.startswith("havedane "):  # the ready line ("havedane: ..." is an error)
                    started.set()
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or not started.is_set() or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("havedane serve did not start:\n" + "".join(self.output))
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    # -- HTTP ------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        req = urllib.request.Request(self.web + path, method=method, data=body)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null"), {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null"), {k.lower(): v for k, v in e.headers.items()}

    def new_test(self) -> dict[str, Any]:
        status, body, _ = self.request("POST", "/api/tests")
        assert status == 201, body
        return body

    def result(self, alias: str) -> dict[str, Any]:
        status, body, _ = self.request("GET", f"/api/tests/{alias}")
        assert status == 200, body
        return body

    def wait_for(self, alias: str, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.result(alias)
            if predicate(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s: {json.dumps(body, indent=1)}")
            time.sleep(0.05)


def insecure_context() -> ssl.SSLContext:
    """Our certificates are self-issued: these tests look at the receiver, not at PKIX."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def smtp(port: int, sni: str | None = None, helo: str = "sender.example", tls: bool = True) -> smtplib.SMTP:
    """A connected smtplib client, after EHLO (and STARTTLS with `sni` when tls)."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=10)
    client.ehlo(helo)
    if tls:
        client._host = sni  # type: ignore[assignment]  # smtplib sends this as SNI (None: no SNI)
        client.starttls(context=insecure_context())
        client.ehlo(helo)
    return client


def send(
    port: int,
    rcpts: list[str],
    sni: str | None = None,
    helo: str = "sender.example",
    tls: bool = True,
    mail_from: str = "postmaster@sender.example",
    body: bytes = b"Subject: havedane test\r\nMessage-ID: <t@sender.example>\r\n\r\nhello\r\n",
) -> dict[str, tuple[int, bytes]]:
    with smtp(port, sni, helo, tls) as client:
        return client.sendmail(mail_from, rcpts, body)


def require(tool: str) -> str:
    """The path of a tool the test drives (also looked for in /usr/sbin); a missing
    tool skips the test locally but fails it in CI, where it must run."""
    import pytest  # here, not at the top: helpers is imported by non-test scripts too

    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{tool} not installed (scripts/system-packages installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def starttls_socket(port: int, helo: str, host: str = "127.0.0.1") -> socket.socket:
    """A raw connection taken through EHLO and STARTTLS up to the 220: the caller does
    (or refuses) the TLS handshake itself, as the sender under test would."""
    raw = socket.create_connection((host, port), timeout=10)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(f"EHLO {helo}\r\n".encode())
    while not f.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\n")
    assert f.readline().startswith(b"220")
    return raw

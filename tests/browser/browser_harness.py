"""A real `havedane serve`, a real SMTP client and Debian's Chromium: shared by the browser
tests and bench/page_latency.py (which puts this folder on sys.path)."""

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
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Dialog, Page

DOMAIN = "x.test"
CHROMIUM = os.environ.get("HAVEDANE_CHROMIUM", "/usr/bin/chromium")
# Debian's Chromium, never a downloaded one; nothing in it may reach outside loopback.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


SERVER_ENV = {
    "HAVEDANE_VERDICT_GRACE": "3",
    "HAVEDANE_LIMITS_TESTS_PER_MINUTE": "1000",  # every browser test creates tests from 127.0.0.1
}


def chromium_path() -> str | None:
    path = shutil.which(CHROMIUM) or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    return path if path and os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`havedane init` into `directory`, then `havedane serve` on free loopback ports."""

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.env = {**os.environ, **(env or {})}
        self.smtp_port = free_port()
        self.web_port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def init(self) -> Server:
        subprocess.run(
            [sys.executable, "-m", "havedane", "init", "--domain", DOMAIN, "--dir", str(self.directory)],
            check=True,
            capture_output=True,
            text=True,
        )
        return self

    def start(self, timeout: float = 30) -> Server:
        command = [
            sys.executable, "-m", "havedane", "serve", "--config", str(self.directory / "havedane.toml"),
            "--smtp-listen", f"127.0.0.1:{self.smtp_port}", "--web-listen", f"127.0.0.1:{self.web_port}",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        ready = threading.Event()

        def pump(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line)
                if line.startswith("havedane "):
                    ready.set()
            ready.set()

        threading.Thread(target=pump, args=(self.proc,), daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("havedane serve did not start:\n" + "".join(self.output))
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def new_test(self) -> dict[str, Any]:
        request = urllib.request.Request(self.web + "/api/tests", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.load(response))

    def result(self, alias: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.web}/api/tests/{alias}", timeout=10) as response:
            return dict(json.load(response))

    def wait_for_sessions(self, alias: str, count: int, timeout: float = 10) -> None:
        """Wait until `count` sessions of the test are stored: a session is stored when its
        connection ends, just after the client has read the delivery's 250."""
        deadline = time.monotonic() + timeout
        while sum(len(p["sessions"]) for p in self.result(alias)["probes"].values()) < count:
            assert time.monotonic() < deadline, f"{count} sessions not stored within {timeout} s"
            time.sleep(0.05)


def insecure_context() -> ssl.SSLContext:
    """Our certificates are self-issued: the tests look at the page, not at PKIX."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(port: int, helo: str, sni: str | None) -> smtplib.SMTP:
    """A client after EHLO, STARTTLS sending `sni` (None: no SNI at all), and EHLO again."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=10)
    client.ehlo(helo)
    client._host = sni  # type: ignore[attr-defined]  # smtplib sends this as the TLS server name (SNI)
    client.starttls(context=insecure_context())
    client.ehlo(helo)
    return client


def deliver(
    port: int,
    rcpt: str,
    helo: str = "mail.sender.test",
    mail_from: str = "postmaster@sender.test",
    sni: str | None = None,
    tls: bool = True,
    send_sni: bool = True,
) -> float:
    """Deliver one message (over STARTTLS unless `tls` is false; SNI `sni`, by default the
    recipient's domain, none if `send_sni` is false); returns the time.time() at which the
    250 to DATA arrived."""
    if tls:
        client = connect(port, helo, (sni or rcpt.rpartition("@")[2]) if send_sni else None)
    else:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=10)
        client.ehlo(helo)
    try:
        code, reply = client.mail(mail_from)
        assert code == 250, reply
        code, reply = client.rcpt(rcpt)
        assert code == 250, reply
        code, reply = client.data(b"Subject: havedane browser test\r\nMessage-ID: <t@sender.test>\r\n\r\nhello\r\n")
        acknowledged = time.time()
        assert code == 250, reply
    finally:
        client.quit()
    return acknowledged


def refuse(port: int, host: str, helo: str = "mail.sender.test") -> None:
    """What a DANE-validating sender does at a probe whose TLSA records do not match:
    STARTTLS, look at the certificate, QUIT without MAIL."""
    client = connect(port, helo, host)
    client.quit()


def leave_without_tls(address: str, port: int, helo: str = "mail.sender.test") -> None:
    """What a DANE-validating sender does where TLS is mandatory but not offered: EHLO, no
    STARTTLS in the reply, QUIT without MAIL (RFC 7672 §2.2)."""
    client = smtplib.SMTP(address, port, local_hostname=helo, timeout=10)
    client.ehlo(helo)
    assert not client.has_extn("starttls")
    client.quit()


@dataclass
class Watch:
    """What a page did that a test must see: dialogs, script errors, console messages, requests."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        def on_dialog(dialog: Dialog) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        def on_console(message: ConsoleMessage) -> None:
            self.console.append(f"{message.type}: {message.text}")

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", on_console)
        page.on("request", lambda request: self.requests.append(request.url))


def new_page(browser: Browser, watch: Watch, **options: Any) -> tuple[BrowserContext, Page]:
    context = browser.new_context(**options)
    page = context.new_page()
    watch.attach(page)
    return context, page

"""Shared test utilities: `havedane serve` in this process or as a real process, free ports,
a real SMTP client."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVarTuple, Unpack

import httpx
import uvloop

from havedane import cli, setupdir
from havedane import config as configmod
from havedane.config import Listen
from havedane.store import Store, open_store
from havedane.web.app import create_app


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_TEMPLATES: dict[str, Path] = {}
_Ts = TypeVarTuple("_Ts")


def make_setup(directory: Path, domain: str = "x.test") -> Path:
    """A copy of what `havedane init --domain <domain>` writes, into `directory`; returns the
    config path. One `init` per domain and test session: its RSA keys are the slow part, and
    every setup holds the same files (the config names them relative to its own directory),
    so a test that changes its certificates changes only its copy."""
    template = _TEMPLATES.get(domain)
    if template is None:
        root = Path(tempfile.mkdtemp(prefix="havedane-setup-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        template = root / "hd"
        setupdir.init(domain, template, force=False)
        _TEMPLATES[domain] = template
    shutil.copytree(template, directory, dirs_exist_ok=True)
    return directory / "havedane.toml"


def set_up(directory: Path, domain: str = "x.test") -> Path:
    """As make_setup, returning the directory (what `havedane init --dir` was given)."""
    make_setup(directory, domain)
    return directory


class WebClient:
    """The JSON API of a running `havedane serve`, over real HTTP on loopback."""

    web_port: int

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

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

    def wait_for(
        self, alias: str, predicate: Callable[[dict[str, Any]], object], timeout: float = 10
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.result(alias)
            if predicate(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s: {json.dumps(body, indent=1)}")
            time.sleep(0.05)


class _ThreadLoop(uvloop.Loop):
    """The loop `havedane serve` runs on (uvloop, as cli.cmd_serve), in a thread. A thread hears
    no signals: the handlers `serve` registers for SIGTERM/SIGINT are kept for `InProcess.stop`."""

    def __init__(self) -> None:
        super().__init__()
        self.on_signal: dict[int, Callable[[], object]] = {}

    def add_signal_handler(self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts) -> None:
        self.on_signal[sig] = lambda: callback(*args)


class _Lines(logging.Handler):
    """What `serve` logs (with any traceback), as the process would print it."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + "\n")


@dataclass
class InProcess(WebClient):
    """`havedane serve` (cli.serve itself: store, receiver on port 0, web, pruning) on its own
    loop in a thread of the test process: no interpreter start-up, no imports, no child. For
    the tests whose point is not the process boundary; stop() does what SIGTERM does, by
    calling the handler `serve` registered for it."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)
    smtp_port: int = 0
    web_port: int = 0
    output: list[str] = field(default_factory=list)
    error: BaseException | None = None
    _loop: _ThreadLoop | None = None
    _thread: threading.Thread | None = None
    _handler: _Lines | None = None
    _levels: dict[str, int] = field(default_factory=dict)

    def start(self, timeout: float = 20) -> InProcess:
        env = {**os.environ, **self.env}
        config = configmod.load(self.config, env=env)
        self.web_port = self.web_port or free_port()
        if "public_url" not in config.raw.get("web", {}) and "HAVEDANE_WEB_PUBLIC_URL" not in env:
            config = dataclasses.replace(config, public_url=self.web)  # as cmd_serve with --web-listen
        self._handler = _Lines(self.output)
        for name in ("", "uvicorn"):
            logging.getLogger(name).addHandler(self._handler)
        # What the process logs (cmd_serve): INFO and up, but not aiosmtpd's per-command chatter.
        for name, level in (("", logging.INFO), ("mail.log", logging.WARNING)):
            self._levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(level)
        ready = threading.Event()

        def started(line: str) -> None:
            self.output.append(line + "\n")
            # uvicorn configured its loggers (dropping handlers) as it started: listen again.
            logging.getLogger("uvicorn").addHandler(self._handler)  # type: ignore[arg-type]
            ready.set()

        def run() -> None:
            assert self._loop is not None
            smtp = (Listen("127.0.0.1", self.smtp_port),)
            web = Listen("127.0.0.1", self.web_port)
            try:
                self._loop.run_until_complete(cli.serve(config, smtp, web, started))
            except BaseException as e:  # noqa: BLE001 - reported by start() or stop()
                self.error = e
                logging.getLogger("havedane").exception("serve failed")
            finally:
                self._loop.close()
                ready.set()

        self._loop = _ThreadLoop()
        self._thread = threading.Thread(target=run, name="havedane-serve", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or self.error is not None or not self._thread.is_alive():
            self.stop()
            raise RuntimeError("havedane serve did not start:\n" + "".join(self.output))
        match = re.search(r"SMTP on 127\.0\.0\.1:(\d+)", self.output[-1])
        assert match, self.output
        self.smtp_port = int(match.group(1))
        return self

    def stop(self, timeout: float = 10) -> int:
        """As SIGTERM: 0 once `serve` has stopped cleanly."""
        assert self._loop is not None and self._thread is not None
        if self._thread.is_alive():
            term = self._loop.on_signal.get(signal.SIGTERM)
            if term is not None:
                self._loop.call_soon_threadsafe(term)
            self._thread.join(timeout)
        for name in ("", "uvicorn"):
            logging.getLogger(name).removeHandler(self._handler)  # type: ignore[arg-type]
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        if self._thread.is_alive():
            raise AssertionError(f"serve did not stop within {timeout}s:\n" + "".join(self.output))
        return 0 if self.error is None else 1


@dataclass
class Serve(WebClient):
    """A real `havedane serve` subprocess on ephemeral loopback ports: for the tests whose point
    is the process (signals, SIGKILL, the command line, several processes, its memory)."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)
    smtp_port: int = 0
    web_port: int = 0
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)

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


@dataclass
class App:
    """The web app of `havedane serve` called in the test's own loop through httpx's ASGI
    transport (no socket, no server), on the real store of a setup."""

    http: httpx.AsyncClient
    store: Store
    config: configmod.Config

    async def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        r = await self.http.request(method, path, content=body)
        return r.status_code, json.loads(r.content or b"null"), {k.lower(): v for k, v in r.headers.items()}

    async def new_test(self) -> dict[str, Any]:
        status, body, _ = await self.request("POST", "/api/tests")
        assert status == 201, body
        return body

    async def result(self, alias: str) -> dict[str, Any]:
        status, body, _ = await self.request("GET", f"/api/tests/{alias}")
        assert status == 200, body
        return body


APP_URL = "http://127.0.0.1:8080"  # the app's public URL; nothing listens there


@contextlib.asynccontextmanager
async def asgi_app(setup: Path, env: dict[str, str] | None = None) -> AsyncIterator[App]:
    """The app of `setup` (its config with `env` over it), its SQLite store opened in this loop;
    requests come from 127.0.0.1, as over loopback."""
    config = configmod.load(setup, env={"HAVEDANE_WEB_PUBLIC_URL": APP_URL, **(env or {})})
    store = open_store(config.store_url, config.store_busy_timeout, config.store_write_timeout)
    await store.open()
    transport = httpx.ASGITransport(app=create_app(config, store), client=("127.0.0.1", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=APP_URL) as http:
            yield App(http, store, config)
    finally:
        await store.close()


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
        client._host = sni  # type: ignore[attr-defined]  # smtplib sends this as SNI (None: no SNI)
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

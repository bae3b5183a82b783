"""`havedane serve` without a process of its own, for the tests whose point is not the process
boundary: the whole of `serve` on a loop in a thread (InProcess), or the web app alone in the
test's own loop through httpx's ASGI transport (asgi_app)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVarTuple, Unpack

import httpx
import uvloop

from havedane import cli_serve
from havedane import config as configmod
from havedane.config import Listen
from havedane.store import Store, open_store
from havedane.web.app import create_app
from helpers import WebClient, free_port

_Ts = TypeVarTuple("_Ts")


class _ThreadLoop(uvloop.Loop):
    """The loop `havedane serve` runs on (uvloop, as cli_serve.cmd_serve), in a thread. A thread hears
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
    """`havedane serve` (cli_serve.serve itself: store, receiver on port 0, web, pruning) on its own
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
                self._loop.run_until_complete(cli_serve.serve(config, smtp, web, started))
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
async def asgi_app(setup: Path, env: dict[str, str] | None = None, client: str = "127.0.0.1") -> AsyncIterator[App]:
    """The app of `setup` (its config with `env` over it), its SQLite store opened in this loop;
    requests come from `client` (by default 127.0.0.1, as over loopback)."""
    config = configmod.load(setup, env={"HAVEDANE_WEB_PUBLIC_URL": APP_URL, **(env or {})})
    store = open_store(config.store_url, config.store_busy_timeout, config.store_write_timeout)
    await store.open()
    transport = httpx.ASGITransport(app=create_app(config, store), client=(client, 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=APP_URL) as http:
            yield App(http, store, config)
    finally:
        await store.close()

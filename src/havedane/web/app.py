"""The web app: landing page, result pages (permalinks), the JSON API and live updates (SSE).

Its parts beside it: the security headers and the cached status read in front of Starlette
(web.headers), the response cache (web.cache), the live pages (web.streams), who a request
comes from (web.clients), the error answers (web.errors) and the page's templates (web.page).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import prometheus_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from havedane import report
from havedane.config import Config
from havedane.metrics import CONTENT_TYPE, Metrics
from havedane.model import Test
from havedane.store import Store, TooManyTests
from havedane.web import page
from havedane.web.cache import CACHE_SECONDS, Built, Entry, ResponseCache
from havedane.web.clients import metrics_allowed, requester
from havedane.web.errors import Errors, json_error
from havedane.web.headers import SecurityHeaders, cached_headers
from havedane.web.streams import Streams, state_id, watched

HERE = Path(__file__).parent
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
ALIAS_LENGTH = 16  # 16 * log2(36) = 82.7 bits from the CSPRNG: not guessable
NO_STORE = {"Cache-Control": "no-store"}


def new_alias() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(ALIAS_LENGTH))


def valid_alias(alias: str) -> bool:
    return 1 <= len(alias) <= 64 and all(c in ALPHABET for c in alias)


class Web:
    def __init__(
        self, config: Config, store: Store, now: Callable[[], float] = time.time, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.now = now
        self.metrics = metrics or Metrics()
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies]
        self.metrics_from = [ipaddress.ip_network(n, strict=False) for n in config.metrics_from]
        # Creations from one client address run one at a time (a lock per address, dropped when
        # no request holds or awaits it): a burst of concurrent requests cannot all pass the
        # per-minute check before any of them commits.
        self._creating: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self.templates = page.environment(config)
        for name in ("index.html", "test.html", "result.html", "error.html"):
            self.templates.get_template(name)  # compiled now: compiling holds the GIL for ~0.1 s
        self.errors = Errors(self.templates)
        # The API's JSON and the page per alias, until the test changes (store.changes, fed
        # across processes too): see havedane.web.cache.
        self.cache = ResponseCache(now, cached_headers)
        store.changes.listeners.append(self.cache.invalidate)
        # Creations in the last minute from every address (this process): a bound on how fast
        # rotating addresses can fill the store.
        self._created: collections.deque[float] = collections.deque()
        # Open live pages (SSE), per client_group and in total: each holds a socket.
        self.streams = Streams(config, store, self._report, self.metrics)
        self.metrics.streams(lambda: self.streams.total)

    # -- creating tests -------------------------------------------------------

    async def _create(self, request: Request) -> Test | JSONResponse:
        ip = requester(request, self.trusted)
        now = self.now()
        lock, users = self._creating.setdefault(ip, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                recent = await self.store.recent_tests_from(ip, now - 60)
                if recent >= self.config.tests_per_minute:
                    return self.metrics.refused("tests_per_minute", json_error(
                        429, "too many tests created from your address; try again in a minute", {"Retry-After": "60"}
                    ))  # fmt: skip
                while self._created and self._created[0] <= now - 60:
                    self._created.popleft()
                if len(self._created) >= self.config.tests_per_minute_total:
                    return self.metrics.refused("tests_per_minute_total", json_error(
                        503, "the service is creating too many tests right now; try again in a minute",
                        {"Retry-After": "60"},
                    ))  # fmt: skip
                self._created.append(now)  # before the write: concurrent creations see it
                test = Test(new_alias(), now, ip)
                try:
                    with self.metrics.writing("create_test"):
                        await self.store.create_test(test, self.config.max_tests, now - self.config.reclaim_after)
                except TooManyTests:
                    self._created.remove(now)
                    return self.metrics.refused("max_tests", json_error(
                        503, "the service holds as many tests as it can; try again later", {"Retry-After": "300"}
                    ))  # fmt: skip
                except BaseException:
                    self._created.remove(now)
                    raise
                self.metrics.tests_created.inc()
                return test
        finally:
            users[0] -= 1
            if not users[0]:
                del self._creating[ip]

    async def api_create(self, request: Request) -> Response:
        created = await self._create(request)
        if isinstance(created, Response):
            return created
        body = {
            "alias": created.alias,
            "url": f"{self.config.public_url}/t/{created.alias}",
            "created": report.iso(created.created),
            "addresses": report.addresses(self.config, created.alias),
        }
        return JSONResponse(body, status_code=201, headers={"Location": f"/api/tests/{created.alias}"})

    async def form_create(self, request: Request) -> Response:
        created = await self._create(request)
        if isinstance(created, JSONResponse):
            message = json.loads(bytes(created.body))["error"]
            return self.errors.page(message, created.status_code, {"Retry-After": created.headers["Retry-After"]})
        return RedirectResponse(f"/t/{created.alias}", status_code=303)

    # -- reading tests ----------------------------------------------------------

    async def _report(self, alias: str) -> report.Report | None:
        if not valid_alias(alias):
            return None
        rep = await report.load(self.store, self.config, alias, self.now())
        if rep is not None:
            self.metrics.verdict(alias, rep.verdict.code)
        return rep

    async def _cached(self, kind: str, alias: str) -> Entry | None:
        """The test's JSON (`kind` "json") or page (a template's name), from the cache or built."""
        if not valid_alias(alias):
            return None
        return await self.cache.read(kind, alias, lambda: self._build(kind, alias))

    async def _build(self, kind: str, alias: str) -> Built | None:
        rep = await self._report(alias)
        if rep is None:
            return None
        render = self._json_bytes if kind == "json" else functools.partial(self._render, kind)
        body = await asyncio.to_thread(render, rep)  # off the loop that serves SMTP
        expires = rep.now + CACHE_SECONDS
        if rep.verdict.grace_ends is not None and rep.verdict.grace_ends > rep.now:
            expires = min(expires, rep.verdict.grace_ends)  # the verdict moves then
        return Built(body, expires, frozenset(watched(alias, rep)))

    async def api_test(self, request: Request) -> Response:
        entry = await self._cached("json", request.path_params["alias"])
        if entry is None:
            return json_error(404, "no such test")
        return Response(entry.body, media_type="application/json", headers=NO_STORE)

    async def page_test(self, request: Request) -> Response:
        name = "result.html" if request.query_params.get("fragment") == "1" else "test.html"
        entry = await self._cached(name, request.path_params["alias"])
        if entry is None:
            return self.errors.page("There is no such test (or it has expired).", 404)
        return HTMLResponse(entry.body, headers=NO_STORE)

    def _json_bytes(self, rep: report.Report) -> bytes:
        return json.dumps(report.to_json(self.config, rep), ensure_ascii=False, separators=(",", ":")).encode()

    def _render(self, name: str, rep: report.Report) -> bytes:
        body = report.to_json(self.config, rep)
        return self.templates.get_template(name).render(r=body, state=state_id(body)[1]).encode()

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.templates.get_template("index.html").render())

    async def events(self, request: Request) -> Response:
        alias = request.path_params["alias"]
        if await self._report(alias) is None:
            return json_error(404, "no such test")
        # Each stream holds a socket for as long as the page is open: bounded per client and
        # in total. Beyond, the page polls the JSON API instead (static/test.js).
        return self.streams.open(requester(request, self.trusted), alias, request.headers.get("last-event-id"))

    async def metrics_text(self, request: Request) -> Response:
        """The counters in the Prometheus text format, for `[web] metrics_from` only: they show
        the service's load and limits, which are nobody else's business."""
        if not metrics_allowed(request, self.trusted, self.metrics_from):
            return json_error(403, "metrics are served only to the networks of [web] metrics_from")
        body = prometheus_client.generate_latest(self.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE, headers=NO_STORE)


def create_app(
    config: Config, store: Store, now: Callable[[], float] = time.time, metrics: Metrics | None = None
) -> ASGIApp:
    web = Web(config, store, now, metrics)
    routes: list[Any] = [
        Route("/", web.index, methods=["GET"]),
        Route("/new", web.form_create, methods=["POST"]),
        Route("/t/{alias}", web.page_test, methods=["GET"]),
        Route("/api/tests", web.api_create, methods=["POST"]),
        Route("/api/tests/{alias}", web.api_test, methods=["GET"]),
        Route("/api/tests/{alias}/events", web.events, methods=["GET"]),
        Route("/metrics", web.metrics_text, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers=web.errors.handlers())
    return SecurityHeaders(app, web.cache)


def abort_streams(server: Any) -> None:
    """Close every live page's connection at once (they would hold a graceful shutdown for
    its whole timeout, and then be cancelled with tracebacks): the pages reconnect, to the
    next process, and read the whole state again."""
    for conn in list(server.server_state.connections):
        cycle = getattr(conn, "cycle", None)
        if cycle is not None and not cycle.response_complete and cycle.scope.get("path", "").endswith("/events"):
            conn.transport.abort()


async def serve_forever(
    app: ASGIApp,
    host: str,
    port: int,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    send_timeout: float = 30.0,
) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager  # type: ignore[untyped-decorator,unused-ignore]
        def capture_signals(self) -> Iterator[None]:
            yield  # `havedane serve` owns SIGTERM/SIGINT and stops every part in order

    server = Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                       server_header=False, timeout_graceful_shutdown=2, proxy_headers=False)
    )  # fmt: skip
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        await task  # raises the bind error
        raise OSError(f"web server on {host}:{port} did not start")
    # A peer that reads nothing (zero window) or acknowledges nothing for `send_timeout` is
    # dropped by the kernel (TCP_USER_TIMEOUT, RFC 5482; accepted sockets inherit it): what
    # havedane buffers for a stalled live page is then freed, with its socket and its slot.
    for listener in server.servers:
        for sock in listener.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and send_timeout > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(send_timeout * 1000))
    if ready is not None:
        ready.set()
    await stop.wait()
    abort_streams(server)
    server.should_exit = True
    await task

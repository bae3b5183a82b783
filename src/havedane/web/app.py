"""The web app: landing page, result pages (permalinks), the JSON API and live updates (SSE)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from havedane import report
from havedane.config import Config
from havedane.model import Test
from havedane.store import Store, StoreError, StoreFull, TooManyTests
from havedane.store.base import client_key
from havedane.web import page
from havedane.web.cache import CACHE_SECONDS, Built, Entry, ResponseCache

HERE = Path(__file__).parent
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
ALIAS_LENGTH = 16  # 16 * log2(36) = 82.7 bits from the CSPRNG: not guessable
log = logging.getLogger("havedane.web")
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream (proxies drop idle connections)

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]  # fmt: skip


NO_STORE = {"Cache-Control": "no-store"}
STATUS_PREFIX = "/api/tests/"


def state_id(body: dict[str, Any]) -> tuple[str, str]:
    """The JSON text of a test's state and its digest: the SSE event id, also written into the
    page, so a page that already shows a state does not fetch it again."""
    payload = json.dumps(body, separators=(",", ":"))
    return payload, hashlib.sha256(payload.encode()).hexdigest()[:16]


def new_alias() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(ALIAS_LENGTH))


def valid_alias(alias: str) -> bool:
    return 1 <= len(alias) <= 64 and all(c in ALPHABET for c in alias)


def cached_headers(kind: str, body: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of a cached read: those `api_test` / `page_test` send, security headers included."""
    media = b"application/json" if kind == "json" else b"text/html; charset=utf-8"
    return [
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
        (b"content-type", media),
        *SECURITY_HEADERS,
    ]


class SecurityHeaders:
    """Adds the security headers to every response (pure ASGI: no buffering of SSE).

    A status read (`GET /api/tests/{alias}`) whose JSON is in the web app's cache is answered
    here, from bytes and headers built when it was cached (`cached_headers`: the security
    headers are among them), without Starlette's middleware, routing and Response objects:
    those were a quarter of the time of the most frequent request (docs/benchmarks.md).
    """

    def __init__(self, app: ASGIApp, cache: ResponseCache | None = None) -> None:
        self.app = app
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if (
            self.cache is not None
            and path.startswith(STATUS_PREFIX)
            and scope["method"] == "GET"
            and not scope.get("root_path")
        ):
            cached = self.cache.fresh("json", path[len(STATUS_PREFIX) :])
            if cached is not None:
                await send({"type": "http.response.start", "status": 200, "headers": cached.headers})
                await send({"type": "http.response.body", "body": cached.body})
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_ip(request: Request, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The visitor's address: X-Forwarded-For is believed only from trusted proxies,
    read right to left, stopping at the first address that is not a trusted proxy."""
    peer = request.client.host if request.client else "unknown"
    chain = [peer]
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        chain = [a.strip() for a in forwarded.split(",") if a.strip()] + chain
    for addr in reversed(chain):
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return addr if addr == peer else peer
        if not any(ip in net for net in trusted):
            return str(ip)
    return chain[0]


def client_group(ip: str) -> str:
    """Who a limit counts: an IPv4 address, or the /64 of an IPv6 address (RFC 4291 §2.5.1:
    one interface ID per host, so one host commonly holds a whole /64 and can rotate within it)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def senders(rep: report.Report) -> set[str]:
    """The client addresses that delivered to the test: sessions tied to no test from them
    show on its page (correlated by client address), so its live page watches them."""
    return {d.client_ip for r in rep.verdict.probes.values() for d in r.deliveries}


class EventStream(StreamingResponse):
    """An SSE response that gives its slot back when it ends, however it ends."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Web:
    def __init__(self, config: Config, store: Store, now: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.now = now
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies]
        # Creations from one client address run one at a time (a lock per address, dropped when
        # no request holds or awaits it): a burst of concurrent requests cannot all pass the
        # per-minute check before any of them commits.
        self._creating: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self.templates = page.environment(config)
        for name in ("index.html", "test.html", "result.html", "error.html"):
            self.templates.get_template(name)  # compiled now: compiling holds the GIL for ~0.1 s
        # The API's JSON and the page per alias, until the test changes (store.changes, fed
        # across processes too): see havedane.web.cache.
        self.cache = ResponseCache(now, cached_headers)
        store.changes.listeners.append(self.cache.invalidate)
        # Creations in the last minute from every address (this process): a bound on how fast
        # rotating addresses can fill the store.
        self._created: collections.deque[float] = collections.deque()
        # Open live pages (SSE), per client_group and in total: each holds a socket.
        self._streams: dict[str, int] = {}
        self._stream_total = 0

    # -- creating tests -------------------------------------------------------

    async def _create(self, request: Request) -> Test | JSONResponse:
        ip = client_group(client_ip(request, self.trusted))
        now = self.now()
        lock, users = self._creating.setdefault(ip, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                recent = await self.store.recent_tests_from(ip, now - 60)
                if recent >= self.config.tests_per_minute:
                    return json_error(
                        429, "too many tests created from your address; try again in a minute", {"Retry-After": "60"}
                    )
                while self._created and self._created[0] <= now - 60:
                    self._created.popleft()
                if len(self._created) >= self.config.tests_per_minute_total:
                    return json_error(
                        503, "the service is creating too many tests right now; try again in a minute",
                        {"Retry-After": "60"},
                    )  # fmt: skip
                self._created.append(now)  # before the write: concurrent creations see it
                test = Test(new_alias(), now, ip)
                try:
                    await self.store.create_test(test, self.config.max_tests, now - self.config.reclaim_after)
                except TooManyTests:
                    self._created.remove(now)
                    return json_error(
                        503, "the service holds as many tests as it can; try again later", {"Retry-After": "300"}
                    )
                except BaseException:
                    self._created.remove(now)
                    raise
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
            page = self.templates.get_template("error.html").render(message=json.loads(bytes(created.body))["error"])
            return HTMLResponse(
                page, status_code=created.status_code, headers={"Retry-After": created.headers["Retry-After"]}
            )
        return RedirectResponse(f"/t/{created.alias}", status_code=303)

    # -- reading tests ----------------------------------------------------------

    async def _report(self, alias: str) -> report.Report | None:
        if not valid_alias(alias):
            return None
        return await report.load(self.store, self.config, alias, self.now())

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
        return Built(body, expires, frozenset({alias} | {client_key(ip) for ip in senders(rep)}))

    async def api_test(self, request: Request) -> Response:
        entry = await self._cached("json", request.path_params["alias"])
        if entry is None:
            return json_error(404, "no such test")
        return Response(entry.body, media_type="application/json", headers=NO_STORE)

    async def page_test(self, request: Request) -> Response:
        name = "result.html" if request.query_params.get("fragment") == "1" else "test.html"
        entry = await self._cached(name, request.path_params["alias"])
        if entry is None:
            page = self.templates.get_template("error.html").render(
                message="There is no such test (or it has expired)."
            )
            return HTMLResponse(page, status_code=404)
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
        rep = await self._report(alias)
        if rep is None:
            return json_error(404, "no such test")
        # Each stream holds a socket for as long as the page is open: bounded per client and
        # in total. Beyond, the page polls the JSON API instead (static/test.js).
        who = client_group(client_ip(request, self.trusted))
        if self._stream_total >= self.config.max_streams:
            return json_error(
                503, "too many live pages (event streams) are open; this page will poll", {"Retry-After": "60"}
            )
        if self._streams.get(who, 0) >= self.config.max_streams_per_client:
            return json_error(
                429, "too many live pages (event streams) open from your address; this page will poll",
                {"Retry-After": "60"},
            )  # fmt: skip
        self._streams[who] = self._streams.get(who, 0) + 1
        self._stream_total += 1

        def release() -> None:
            self._stream_total -= 1
            self._streams[who] -= 1
            if not self._streams[who]:
                del self._streams[who]

        return EventStream(self._stream(alias, request.headers.get("last-event-id")), release)

    async def _stream(self, alias: str, last_id: str | None) -> AsyncIterator[str]:
        """One `update` event per change of the test's state; the id is a digest of the
        state, so a reconnecting client (Last-Event-ID) gets only what it has not seen.
        Only the latest state is ever pending: a state is built when the previous one has
        been handed to the socket, and a reader that stalls is dropped by the kernel
        (TCP_USER_TIMEOUT, set in serve_forever)."""
        yield "retry: 2000\n\n"
        keys = {alias}
        changed = await self._watch(keys)
        try:
            while True:
                rep = await self._report(alias)
                if rep is None:
                    yield "event: gone\ndata: {}\n\n"
                    return
                watched = {alias} | {client_key(ip) for ip in senders(rep)}
                if not watched <= keys:
                    # A new sender: watch its address too, from before a read that shows it.
                    changed.cancel()
                    keys = watched
                    changed = await self._watch(keys)
                    continue
                payload, event_id = state_id(report.to_json(self.config, rep))
                if event_id != last_id:
                    yield f"id: {event_id}\nevent: update\ndata: {payload}\n\n"
                    last_id = event_id
                # Wake on a change, or when the grace period ends (the verdict moves with time).
                timeout = KEEPALIVE
                grace_ends = rep.verdict.grace_ends
                if grace_ends is not None and grace_ends > rep.now:
                    timeout = min(timeout, grace_ends - rep.now + 0.05)
                done, _ = await asyncio.wait({changed}, timeout=timeout)
                if done:
                    changed = await self._watch(keys)
                else:
                    yield ": keep-alive\n\n"
        finally:
            changed.cancel()

    async def _watch(self, keys: set[str]) -> asyncio.Task[bool]:
        """A waiter for the next change of `keys`, registered before the caller reads the
        state: a change that lands between the read and the wait is not lost."""
        task = asyncio.create_task(self.store.changes.wait(keys, 3600))
        await asyncio.sleep(0)  # let the task run up to its wait: it is registered from here on
        return task

    async def not_found(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: "not found", 405: "method not allowed"}.get(status, "error")
        if request.url.path.startswith("/api/"):
            return json_error(status, message)
        page = self.templates.get_template("error.html").render(message=message.capitalize() + ".")
        return HTMLResponse(page, status_code=status)

    async def store_error(self, request: Request, exc: Exception) -> Response:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        if isinstance(exc, StoreFull):
            # 507 Insufficient Storage (RFC 4918 §11.5): the operator must free space.
            return json_error(507, "the server's disk is full; try again later", {"Retry-After": "300"})
        return json_error(503, "the database is busy or unavailable; try again", {"Retry-After": "5"})

    async def server_error(self, request: Request, exc: Exception) -> Response:
        return json_error(500, "internal error")


def create_app(config: Config, store: Store, now: Callable[[], float] = time.time) -> ASGIApp:
    web = Web(config, store, now)
    routes: list[Any] = [
        Route("/", web.index, methods=["GET"]),
        Route("/new", web.form_create, methods=["POST"]),
        Route("/t/{alias}", web.page_test, methods=["GET"]),
        Route("/api/tests", web.api_create, methods=["POST"]),
        Route("/api/tests/{alias}", web.api_test, methods=["GET"]),
        Route("/api/tests/{alias}/events", web.events, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: web.not_found, StoreError: web.store_error, Exception: web.server_error},
    )
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

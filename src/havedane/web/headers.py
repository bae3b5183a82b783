"""What every response carries: the security headers, added in front of Starlette (pure ASGI).

The most frequent request, a status read (`GET /api/tests/{alias}`) whose JSON is in the web
app's cache, is answered here too, from bytes and headers built when it was cached
(`cached_headers`: the security headers are among them), without Starlette's middleware,
routing and Response objects: those were a quarter of its time (docs/benchmarks.md).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from havedane.web.cache import ResponseCache

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]  # fmt: skip
STATUS_PREFIX = "/api/tests/"


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
    """Adds the security headers to every response (pure ASGI: no buffering of SSE), and
    answers a status read from the cache when its JSON is there."""

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

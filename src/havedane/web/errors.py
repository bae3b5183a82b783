"""How the web app says no: a JSON error for the API, the error page for a browser, and the
answers to the store's failures (busy, full) and to any other exception."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from havedane.store import StoreError, StoreFull

log = logging.getLogger("havedane.web")
Handler = Callable[[Request, Exception], Awaitable[Response]]


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Errors:
    """The error page (templates/error.html) and Starlette's exception handlers."""

    def __init__(self, templates: jinja2.Environment) -> None:
        self.templates = templates

    def page(self, message: str, status: int, headers: dict[str, str] | None = None) -> HTMLResponse:
        body = self.templates.get_template("error.html").render(message=message)
        return HTMLResponse(body, status_code=status, headers=headers)

    def handlers(self) -> dict[Any, Handler]:
        return {HTTPException: self.not_found, StoreError: self.store_error, Exception: self.server_error}

    async def not_found(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: "not found", 405: "method not allowed"}.get(status, "error")
        if request.url.path.startswith("/api/"):
            return json_error(status, message)
        return self.page(message.capitalize() + ".", status)

    async def store_error(self, request: Request, exc: Exception) -> Response:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        if isinstance(exc, StoreFull):
            # 507 Insufficient Storage (RFC 4918 §11.5): the operator must free space.
            return json_error(507, "the server's disk is full; try again later", {"Retry-After": "300"})
        return json_error(503, "the database is busy or unavailable; try again", {"Retry-After": "5"})

    async def server_error(self, request: Request, exc: Exception) -> Response:
        return json_error(500, "internal error")

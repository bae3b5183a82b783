"""The floor under the web app (issue 13): a bare Starlette app on uvicorn returning fixed bytes.

It serves, at `GET /api/tests/{alias}`, the bytes given in --body (fetched once from a real
`havedane serve`), with the same content type, on uvicorn with the same loop and HTTP
parser as `havedane serve`. bench/floor.sh runs wrk against both.

    .venv/bin/python bench/bare_web.py --body /tmp/test.json --listen 127.0.0.1:8282
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def app_for(body: bytes) -> Starlette:
    async def test(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/api/tests/{alias}", test)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--body", type=Path, required=True)
    ap.add_argument("--listen", default="127.0.0.1:8282")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    # The same uvicorn settings as havedane's web server (web/app.py: serve_forever).
    uvicorn.run(app_for(args.body.read_bytes()), host=host, port=int(port), log_level="warning", access_log=False,
                lifespan="off", server_header=False, proxy_headers=False)  # fmt: skip


if __name__ == "__main__":
    main()

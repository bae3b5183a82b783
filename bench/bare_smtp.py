"""The floor under the receiver (issue 13): a bare aiosmtpd receiver with nothing of havedane.

STARTTLS with the same chain as `havedane serve` (the ECDSA leaf from a `havedane init`
directory), the same aiosmtpd, the same event loop (uvloop when installed), and each
message committed to SQLite (WAL, synchronous=NORMAL, as havedane's store) before its
`250`: one row per recipient. No test lookup, no sessions, no limits, no logging.
bench/floor.sh drives it with bench/smtp_load.py beside `havedane serve`.

    .venv/bin/python bench/bare_smtp.py --tls-dir D/tls --listen 127.0.0.1:2726 --db /tmp/bare.sqlite3
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import ssl
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Handler:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any) -> str:
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        size = len(envelope.original_content or b"")
        now = time.time()
        with self.db:  # committed before the reply
            self.db.executemany(
                "INSERT INTO deliveries (rcpt, received_at, size) VALUES (?, ?, ?)",
                [(rcpt, now, size) for rcpt in envelope.rcpt_tos],
            )
        return "250 2.0.0 OK"


async def serve(host: str, port: int, ctx: ssl.SSLContext, db: sqlite3.Connection) -> None:
    handler = Handler(db)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bare.example", tls_context=ctx, enable_SMTPUTF8=True), host, port
    )
    print(f"bare aiosmtpd on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tls-dir", type=Path, required=True, help="the tls/ directory of a `havedane init`")
    ap.add_argument("--listen", default="127.0.0.1:2726")
    ap.add_argument("--db", type=Path, required=True)
    args = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_dir / "chain-ecdsa.pem", args.tls_dir / "leaf-ecdsa.key")
    db = sqlite3.connect(args.db, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS deliveries (rcpt TEXT, received_at REAL, size INTEGER)")
    db.isolation_level = ""  # `with db:` opens and commits a transaction per message
    host, _, port = args.listen.rpartition(":")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(host, int(port), ctx, db))
    else:
        uvloop.run(serve(host, int(port), ctx, db))


if __name__ == "__main__":
    main()

"""Load generator for the receiver: recorded deliveries per second.

One delivery = one accepted recipient, committed. Each message: a new TCP
connection, EHLO, STARTTLS (full handshake, no session resumption), EHLO, MAIL,
three RCPTs (do, dont, wrong of one test), DATA, QUIT. `--clients` run at once.

Run against a live server (it creates its own test through the API):

    havedane serve --config D/havedane.toml --smtp-listen 127.0.0.1:2525 --web-listen 127.0.0.1:8080 &
    python bench/smtp_load.py --smtp 127.0.0.1:2525 --web http://127.0.0.1:8080 --seconds 20

It counts 250 replies to DATA at the client and, with --db, checks the database
holds at least that many deliveries for the test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sqlite3
import ssl
import time
import urllib.request


def insecure() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if not line.startswith(code):
            raise RuntimeError(f"expected {code!r}, got {line!r}")
        if line[3:4] != b"-":
            return


async def one_message(host: str, port: int, rcpts: list[str], ctx: ssl.SSLContext) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await expect(reader, b"220")
        writer.write(b"EHLO bench.example\r\n")
        await expect(reader, b"250")
        writer.write(b"STARTTLS\r\n")
        await expect(reader, b"220")
        await writer.start_tls(ctx, server_hostname=rcpts[0].split("@", 1)[1])  # the test's do host
        writer.write(b"EHLO bench.example\r\nMAIL FROM:<bench@bench.example>\r\n")
        await expect(reader, b"250")
        await expect(reader, b"250")
        writer.write(b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts))
        for _ in rcpts:
            await expect(reader, b"250")
        writer.write(b"DATA\r\n")
        await expect(reader, b"354")
        writer.write(b"Subject: bench\r\nMessage-ID: <b@bench.example>\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        await expect(reader, b"250")
        return len(rcpts)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def worker(host: str, port: int, rcpts: list[str], until: float, counts: list[int], errors: list[int]) -> None:
    ctx = insecure()
    while time.monotonic() < until:
        try:
            accepted = await one_message(host, port, rcpts, ctx)
            counts[0] += accepted  # (not `+= await`: that would read before the await and lose updates)
            counts[1] += 1
        except (OSError, RuntimeError, ssl.SSLError):
            errors[0] += 1


def run_process(
    host: str, port: int, rcpts: list[str], clients: int, seconds: float, out: multiprocessing.Queue[tuple[int, ...]]
) -> None:
    counts, errors = [0, 0], [0]
    until = time.monotonic() + seconds

    async def main() -> None:
        await asyncio.gather(*(worker(host, port, rcpts, until, counts, errors) for _ in range(clients)))

    asyncio.run(main())
    out.put((counts[0], counts[1], errors[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smtp", default="127.0.0.1:2525")
    ap.add_argument("--web", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=16, help="concurrent SMTP clients in all")
    ap.add_argument("--procs", type=int, default=1, help="generator processes sharing the clients")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--db", help="SQLite database to check the count against")
    ap.add_argument("--rcpt", action="append", help="recipients to use instead of a new test's (bare receivers)")
    args = ap.parse_args()
    host, _, port = args.smtp.rpartition(":")
    if args.rcpt:
        test, rcpts = {"alias": None}, args.rcpt
    else:
        req = urllib.request.Request(args.web + "/api/tests", method="POST")
        test = json.load(urllib.request.urlopen(req))
        rcpts = [test["addresses"][p] for p in ("do", "dont", "wrong")]
    queue: multiprocessing.Queue[tuple[int, ...]] = multiprocessing.Queue()
    per = [args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)]
    procs = [
        multiprocessing.Process(target=run_process, args=(host, int(port), rcpts, n, args.seconds, queue)) for n in per
    ]
    start = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - start
    deliveries = sum(r[0] for r in results)
    messages = sum(r[1] for r in results)
    errors = sum(r[2] for r in results)
    print(
        f"clients={args.clients} procs={args.procs} seconds={elapsed:.1f} messages={messages} "
        f"deliveries={deliveries} errors={errors} deliveries/s={deliveries / elapsed:.0f} "
        f"messages/s={messages / elapsed:.0f}"
    )
    if args.db and test["alias"]:
        time.sleep(1)
        conn = sqlite3.connect(args.db)
        (stored,) = conn.execute("SELECT count(*) FROM deliveries WHERE alias = ?", (test["alias"],)).fetchone()
        print(f"stored deliveries for the test: {stored} (acknowledged: {deliveries})")
        if stored < deliveries:
            raise SystemExit("LOST DELIVERIES")


if __name__ == "__main__":
    main()

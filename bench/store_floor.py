"""The store's share of a delivery (issue 13): CPU per message of what the receiver asks of
SQLiteStore for one message, without SMTP or TLS, beside a bare commit on the event loop.

Each message, as the receiver does it: get_test for each of 3 recipients, add_deliveries
(3 rows, committed before it returns), save_session. `--clients` messages at once. The
bare line does what bench/bare_smtp.py does: one transaction per message, on the loop.
CPU is the process's (all threads: the writer thread's too), per message.

    .venv/bin/python bench/store_floor.py [--messages 4000] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path

from havedane.model import Delivery, Outcome, Session, Test, Tls
from havedane.store.sqlite import SQLiteStore


async def havedane(path: Path, messages: int, clients: int) -> float:
    store = SQLiteStore(path)
    await store.open()
    await store.create_test(Test("bench", time.time(), "127.0.0.1"))
    tls = Tls("TLSv1.3", "TLS_AES_256_GCM_SHA384", "do.x.test")
    left = [messages]

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            s = Session(secrets.token_hex(8), time.time(), "127.0.0.1", 1234, "127.0.0.1", 25)
            rcpts = [f"bench@{p}.x.test" for p in ("do", "dont", "wrong")]
            for _ in rcpts:
                await store.get_test("bench")
            now = time.time()
            await store.add_deliveries(
                [
                    Delivery(
                        "bench",
                        r.split("@")[1].split(".")[0],
                        now,
                        "127.0.0.1",
                        "bench.example",
                        "a@b",
                        r,
                        tls,
                        s.id,
                        100,
                        "<b@bench>",
                    )
                    for r in rcpts
                ]  # fmt: skip
            )
            # The frozen Session the receiver emits when the connection ends.
            done = dataclasses.replace(
                s, helo="bench.example", tls=tls, mail_from="a@b", rcpts=tuple(rcpts), alias="bench", probe="do",
                outcome=Outcome.DELIVERED, ended=time.time(),
            )  # fmt: skip
            await store.save_session(done)

    t0 = time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    used = time.process_time() - t0
    await store.close()
    return used


async def bare(path: Path, messages: int, clients: int) -> float:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE deliveries (rcpt TEXT, received_at REAL, size INTEGER)")
    db.isolation_level = ""
    left = [messages]

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            with db:
                db.executemany("INSERT INTO deliveries VALUES (?, ?, ?)", [(f"b@{p}", time.time(), 100) for p in "abc"])
            await asyncio.sleep(0)

    t0 = time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    best = {"havedane store": 1e9, "bare commit": 1e9}
    for _ in range(args.rounds):
        for name, run in (("havedane store", havedane), ("bare commit", bare)):
            with tempfile.TemporaryDirectory() as d:
                used = asyncio.run(run(Path(d) / "s.sqlite3", args.messages, args.clients))
            best[name] = min(best[name], used)
    for name, used in best.items():
        print(f"{name}: {1e6 * used / args.messages:.0f} µs CPU per message (best of {args.rounds})")


if __name__ == "__main__":
    main()

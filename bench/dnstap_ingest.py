"""dnstap ingestion rate: DNS queries stored per second by a real havedane reader.

A Frame Streams sender speaking as Knot's mod-dnstap does (READY/ACCEPT, START, data
frames, STOP/FINISH) sends, as fast as the reader takes them, each query as two dnstap
messages (AUTH_QUERY, then AUTH_RESPONSE: `log-queries: on; log-responses: on`), which
the reader pairs into one stored row. The names are zone-level ones (DNSKEY of the
zone, A of a probe host, a probe's TLSA), stored without a per-test bound, so every
query is one row. The count is read from the database at the end: queries/s stored
= rows / (first frame sent .. last row committed).

    havedane serve --config D/havedane.toml   # with [dns] dnstap_socket = "dnstap.sock"
    python bench/dnstap_ingest.py --socket D/dnstap.sock --db D/havedane.sqlite3 --domain havedane.localhost

Run bench/smtp_load.py against the same server at the same time to measure it under SMTP load.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time

import dns.message
import fstrm
from dnstap_pb import dnstap_pb2

CT = b"protobuf:dnstap.Dnstap"


def frames(domain: str, n: int) -> list[bytes]:
    codec = fstrm.FstrmCodec()
    out = []
    names = [(domain, "DNSKEY"), (f"do.{domain}", "A"), (f"_25._tcp.do.{domain}", "TLSA")]
    for i in range(n):
        name, rdtype = names[i % len(names)]
        q = dns.message.make_query(name, rdtype, want_dnssec=True)
        q.id = i & 0xFFFF
        r = dns.message.make_response(q)
        now = time.time()
        pair = ((dnstap_pb2.Message.AUTH_QUERY, q.to_wire()), (dnstap_pb2.Message.AUTH_RESPONSE, r.to_wire()))
        for kind, wire in pair:
            m = dnstap_pb2.Message(
                type=kind, socket_family=dnstap_pb2.INET, socket_protocol=dnstap_pb2.UDP,
                query_address=bytes([198, 51, 100, 1 + i % 200]), response_address=bytes([192, 0, 2, 53]),
                query_port=1024 + i % 60000, response_port=53,
            )  # fmt: skip
            if kind == dnstap_pb2.Message.AUTH_QUERY:
                m.query_message, m.query_time_sec = wire, int(now)
            else:
                m.response_message, m.response_time_sec = wire, int(now)
            tap = dnstap_pb2.Dnstap(type=dnstap_pb2.Dnstap.MESSAGE, message=m)
            out.append(codec.encode_data(tap.SerializeToString()))
    return out


def rows(db: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM dns_queries").fetchone()[0])


async def send(socket: str, payload: list[bytes], seconds: float) -> int:
    reader, writer = await asyncio.open_unix_connection(socket)
    codec = fstrm.FstrmCodec()
    writer.write(codec.encode_ctrlready(CT))
    while not codec.process():
        codec.append(await reader.read(4096))
    codec.decode()  # ACCEPT
    writer.write(codec.encode_ctrlstart(CT))
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for i in range(0, len(payload), 200):
            writer.write(b"".join(payload[i : i + 200]))
            await writer.drain()  # the reader's pace: a socket buffer, like Knot's
        sent += len(payload) // 2
    writer.write(codec.encode(ctrl=fstrm.FSTRM_CONTROL_STOP))
    while not codec.process():
        codec.append(await reader.read(4096))
    writer.close()
    return sent


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--db", required=True, help="the server's SQLite database")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    payload = frames(args.domain, 6000)
    before = rows(args.db)
    start = time.monotonic()
    sent = await send(args.socket, payload, args.seconds)
    last, stable_since = rows(args.db), time.monotonic()
    while time.monotonic() - stable_since < 2 and last - before < sent:  # until every row is in (or none comes)
        await asyncio.sleep(0.1)
        now = rows(args.db)
        if now != last:
            last, stable_since = now, time.monotonic()
    elapsed = stable_since - start
    stored = last - before
    print(f"sent {sent} queries ({2 * sent} dnstap messages), stored {stored} rows in {elapsed:.1f} s: "
          f"{stored / elapsed:,.0f} queries/s stored")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())

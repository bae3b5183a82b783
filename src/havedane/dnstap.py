"""The dnstap reader: what Knot's mod-dnstap streams, read from a unix socket and stored.

Knot connects to the socket as a Frame Streams sender, bidirectional mode
(https://farsightsec.github.io/fstrm/ , "Bidirectional"): it sends READY with the
content type `protobuf:dnstap.Dnstap`, we answer ACCEPT, it sends START, data frames
(each one dnstap protobuf message), and STOP, which we answer with FINISH. `knotc
reload` opens a new connection before it stops the old one: every connection is
served at once. The frames are decoded by PyPI `fstrm`; each frame's dnstap message is
decoded, and queries are paired with their responses, by dnstap_decode.py.

A malformed data frame is counted and logged, and the reader goes on; a connection
whose framing is broken (no resynchronising inside a byte stream) is closed, and
Knot reconnects. Nothing a peer sends stops the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import fstrm

from havedane.config import Config
from havedane.dns.queries import DnsQuery, in_zone, probe_hosts, tie
from havedane.dnstap_decode import Malformed, Pairer, decode
from havedane.metrics import Metrics
from havedane.store import Store

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"
MAX_FRAME = 256 * 1024  # a dnstap message holds at most a query and a response of 64 KiB each
FLUSH_EVERY = 0.2  # seconds between two group commits of the reader
MAX_BUFFERED = 50_000  # queries waiting for the store (while it fails); beyond, new ones are dropped

log = logging.getLogger("havedane.dnstap")


@dataclass
class Counts:
    connections: int = 0
    frames: int = 0
    malformed: int = 0
    outside: int = 0  # names outside the zone (Knot refused them): not stored
    stored: int = 0
    dropped: int = 0  # not stored: the store failed for long, or a test's bound was reached


Sink = Callable[[list[DnsQuery]], Awaitable[int]]  # stores a batch, returns how many rows it kept


class Reader:
    """A Frame Streams server on a unix socket that stores what it reads through `sink`."""

    def __init__(self, path: Path, domain: str, hosts: tuple[str, ...], sink: Sink) -> None:
        self.path, self.domain, self.hosts, self.sink = path, domain, hosts, sink
        self.counts = Counts()
        self._pairer = Pairer()
        self._buffer: list[DnsQuery] = []
        self._server: asyncio.AbstractServer | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()  # left by a reader that died; a live one keeps its own
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        # Knot runs as its own user: it needs write access to the socket, others none.
        os.chmod(self.path, 0o660)
        self._flusher = asyncio.create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self._take(self._pairer.expire(time.monotonic(), everything=True))
        await self.flush()

    def _take(self, queries: list[DnsQuery]) -> None:
        for q in queries:
            if not in_zone(q.qname, self.domain):
                self.counts.outside += 1
            elif len(self._buffer) >= MAX_BUFFERED:
                self.counts.dropped += 1
            else:
                self._buffer.append(tie(q, self.hosts))

    async def flush(self) -> None:
        """One group commit of everything read so far."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            stored = await self.sink(batch)
        except Exception as e:  # noqa: BLE001 - the store is down: keep the batch, retry next time
            log.error("dnstap: storing %d queries failed (kept for the next try): %s", len(batch), e)
            self._buffer = batch + self._buffer
            del self._buffer[MAX_BUFFERED:]
            return
        self.counts.stored += stored
        self.counts.dropped += len(batch) - stored

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self._take(self._pairer.expire(time.monotonic()))
            await self.flush()

    def _malformed(self, why: str) -> None:
        self.counts.malformed += 1
        n = self.counts.malformed
        if n <= 10 or n % 1000 == 0:  # logged, but never a flood of log lines
            log.warning("dnstap: malformed frame (%d so far): %s", n, why)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.counts.connections += 1
        try:
            await self._frames(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # Knot went away (restart): it reconnects
        except Malformed as e:
            self._malformed(f"{e}; connection closed")
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        codec = fstrm.FstrmCodec()
        started = False
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            codec.append(chunk)
            while True:
                ready = codec.process()
                if max(codec.df_length or 0, codec.cf_length or 0) > MAX_FRAME:
                    raise Malformed(f"a frame of {max(codec.df_length or 0, codec.cf_length or 0)} bytes")
                if not ready:
                    break
                try:
                    kind, types, payload = codec.decode()
                except Exception as e:  # noqa: BLE001 - fstrm raises bare Exception for a bad control frame
                    raise Malformed(f"control frame: {e}") from None
                if kind == fstrm.FSTRM_DATA_FRAME:
                    if not started:
                        raise Malformed("a data frame before START")
                    self._data(payload)
                elif kind == fstrm.FSTRM_CONTROL_READY:
                    if CONTENT_TYPE not in types:
                        raise Malformed(f"READY without {CONTENT_TYPE.decode()} (offered {types})")
                    writer.write(codec.encode_ctrlaccept(CONTENT_TYPE))
                    await writer.drain()
                elif kind == fstrm.FSTRM_CONTROL_START:
                    if types and CONTENT_TYPE not in types:
                        raise Malformed(f"START with another content type {types}")
                    started = True
                elif kind == fstrm.FSTRM_CONTROL_STOP:
                    writer.write(codec.encode(ctrl=fstrm.FSTRM_CONTROL_FINISH))
                    await writer.drain()
                    return
                else:
                    raise Malformed(f"unexpected control frame {kind}")

    def _data(self, payload: bytes) -> None:
        self.counts.frames += 1
        try:
            decoded = decode(payload)
        except Malformed as e:
            self._malformed(str(e))
            return
        except Exception as e:  # noqa: BLE001 - whatever a hostile frame makes a decoder raise
            self._malformed(f"{type(e).__name__}: {e}")
            return
        if decoded is not None:
            self._take(self._pairer.add(decoded, time.monotonic()))


def reader_for(config: Config, store: Store, metrics: Metrics | None = None) -> Reader:
    """The reader of `[dns] dnstap_socket`, storing into `store` within `[dns]`'s bounds;
    its counts and its writes' times go to `metrics`."""
    assert config.dnstap_socket is not None
    timed = metrics or Metrics()

    async def sink(batch: list[DnsQuery]) -> int:
        with timed.writing("add_dns_queries"):
            return await store.add_dns_queries(batch, config.max_dns_queries_per_test)

    reader = Reader(config.dnstap_socket, config.domain, probe_hosts(config.domain, config.probes), sink)
    timed.dnstap(reader.counts)
    return reader

"""Bounded cost under attack (issue 12): what one abusive client costs everybody else.

Starts its own `havedane serve` processes (SQLite, `havedane init` in a temporary
directory) on 127.0.0.1 and sends traffic only to loopback, from several 127.0.0.x
source addresses. Every phase is bounded in count and in seconds; it stops by itself.

    .venv/bin/python bench/abuse.py [--json > result.json]   # about 3 minutes: (b), then (a) and (c)

(a) flood: one client floods its own test on ONE SMTP connection (MAIL, the same RCPT
    20 times, DATA; again and again, as fast as it can, the probes in turn; a new
    connection only when the server closes one) until the server refuses everything
    (30 messages in a row with nothing recorded) or the time/count bound. After
    --head-start seconds three clients start reloading that test's page and JSON in
    a loop, and go on for --hold-seconds after the flood has stopped. All along a
    bystander times its SMTP greeting (connect -> 220, from 127.0.0.2) and
    `POST /api/tests` (each from another 127.0.2.x, so the per-address creation
    limit does not interfere), 0.1 s between samples.
(b) memory: a fresh server; 200 connections (20 per source address 127.0.1.x, the
    per-client cap) each send MAIL/RCPT/DATA and ~1 MB of blank lines without the
    final dot, and hold. Peak RSS of the serve process from /proc/<pid>/status. If the
    RSS passes --rss-cap-mb the phase stops sending (the machine is shared) and
    reports how far it got.
    (It reads far slower than 1 MB/s of blank lines today: raise --memory-seconds to
    get all 200 through.)
(c) the heaviest test the limits allow, made after (a) on the same server: a new test
    filled from 127.0.0.11 with --fill-sessions connections that name it (long HELO and
    MAIL FROM, RCPT to every probe, no DATA), 2 x SESSIONS_WITHOUT_MAIL connections from
    that address without MAIL (shown with it, tied by client address), then one
    connection delivering to every probe up to `max_deliveries_per_probe`. Time of
    `GET /api/tests/{alias}` and `GET /t/{alias}` on an otherwise quiet server, 1.2 s
    apart so that each is built rather than served from the 1 s response cache; sizes.

`--json` prints everything as JSON; `--table FILE` prints the table of such a file.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http.client
import importlib.metadata
import json
import multiprocessing
import os
import platform
import queue
import re
import smtplib
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import Serve, make_setup  # noqa: E402

HOST = "127.0.0.1"
RCPTS_PER_MESSAGE = 20  # the default [smtp] max_recipients
CACHE_PAUSE = 1.2  # the web app keeps a test's JSON for at most 1 s (CACHE_SECONDS): (c) times builds
TIMEOUT = 30.0  # seconds for any single client operation (the server may block for seconds)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
    }


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    here = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit.stdout.strip() or "unknown",
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "aiosmtpd": importlib.metadata.version("aiosmtpd"),
        "uvicorn": importlib.metadata.version("uvicorn"),
    }


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the process, in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line[:5]] = int(line.split()[1]) / 1024
    return values["VmRSS"], values["VmHWM"]


def start_server(directory: Path, env: dict[str, str]) -> Serve:
    config = make_setup(directory)
    return Serve(config, env).start()


def new_test(server: Serve) -> dict[str, Any]:
    return server.new_test()


def log(message: str) -> None:
    print(f"[abuse {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- (a) the flood: one client, one connection at a time --------------------------------


def read_reply(f: Any) -> int:
    """The code of one (possibly multi-line) SMTP reply; ConnectionError on EOF."""
    return read_reply_line(f)[0]


def read_reply_line(f: Any) -> tuple[int, bytes]:
    """The code and last line of one (possibly multi-line) SMTP reply; ConnectionError on EOF."""
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return int(line[:3]), line


def recorded(line: bytes, accepted: int) -> int:
    """How many deliveries a 250 to DATA says it recorded: a recipient named several times in
    one message is recorded once ("recorded N deliveries"); other servers: every accepted RCPT."""
    found = re.search(rb"recorded (\d+) deliver", line)
    return int(found.group(1)) if found else accepted


def flood(port: int, rcpts: list[str], seconds: float, max_deliveries: int, out: Any) -> None:
    """Runs in its own process. Message i goes to RCPTS_PER_MESSAGE copies of rcpts[i % n]."""
    start = time.monotonic()
    deadline = start + seconds
    acked = messages = connections = failures = 0
    codes: collections.Counter[str] = collections.Counter()
    stop = "time bound"
    body = b"Subject: flood\r\nMessage-ID: <f@flood.example>\r\n\r\nx\r\n.\r\n"
    while time.monotonic() < deadline and stop == "time bound":
        try:
            sock = socket.create_connection((HOST, port), timeout=TIMEOUT, source_address=("127.0.0.10", 0))
        except OSError as e:
            codes[f"connect {type(e).__name__}"] += 1
            failures += 1
            time.sleep(0.1)
            continue
        connections += 1
        f = sock.makefile("rb")
        try:
            greeting = read_reply(f)
            if greeting != 220:
                codes[f"greeting {greeting}"] += 1
                failures += 1
            else:
                sock.sendall(b"EHLO flood.example\r\n")
                read_reply(f)
            while greeting == 220 and time.monotonic() < deadline and acked < max_deliveries:
                rcpt = b"RCPT TO:<%s>\r\n" % rcpts[messages % len(rcpts)].encode()
                sock.sendall(b"MAIL FROM:<flood@flood.example>\r\n" + rcpt * RCPTS_PER_MESSAGE + b"DATA\r\n")
                messages += 1
                mail = read_reply(f)
                accepted = sum(read_reply(f) == 250 for _ in range(RCPTS_PER_MESSAGE))
                data = read_reply(f)
                if mail != 250:
                    codes[f"MAIL {mail}"] += 1
                if accepted < RCPTS_PER_MESSAGE:
                    codes["RCPT refused"] += RCPTS_PER_MESSAGE - accepted
                if data == 354:
                    sock.sendall(body)
                    final, line = read_reply_line(f)
                    if final == 250:
                        acked += recorded(line, accepted)
                    else:
                        codes[f"end of DATA {final}"] += 1
                        accepted = 0
                else:
                    codes[f"DATA {data}"] += 1
                    accepted = 0
                    if data != 421:
                        sock.sendall(b"RSET\r\n")  # the refused transaction still holds its MAIL
                        read_reply(f)
                failures = 0 if accepted else failures + 1
                if failures >= 30:
                    break
                if mail == 421 or data == 421:
                    break  # the server closes this connection: open another
        except (ConnectionError, OSError) as e:
            codes[f"connection {type(e).__name__}"] += 1
            failures += 1  # closed in the middle of a message: nothing recorded
        finally:
            f.close()
            sock.close()
        if acked >= max_deliveries:
            stop = "count bound"
        elif failures >= 30:
            stop = "server refuses"
    out.put(
        {
            "acknowledged_deliveries": acked,
            "messages": messages,
            "connections": connections,
            "seconds": round(time.monotonic() - start, 1),
            "stopped_by": stop,
            "refusals": dict(codes),
        }
    )


def reload_loop(web_port: int, alias: str, source: str, stop: Any, out: Any) -> None:
    """One reloading visitor (a thread of the reloaders' process): page, then JSON, again."""
    times: dict[str, list[float]] = {"page": [], "json": []}
    statuses: collections.Counter[str] = collections.Counter()
    largest = {"page": 0, "json": 0}
    conn = http.client.HTTPConnection(HOST, web_port, timeout=TIMEOUT * 2, source_address=(source, 0))
    while not stop.is_set():
        for kind, path in (("page", f"/t/{alias}"), ("json", f"/api/tests/{alias}")):
            t0 = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                size = len(response.read())
            except (OSError, http.client.HTTPException) as e:
                statuses[f"{kind} {type(e).__name__}"] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, web_port, timeout=TIMEOUT * 2, source_address=(source, 0))
                continue
            times[kind].append((time.perf_counter() - t0) * 1000)
            statuses[f"{kind} {response.status}"] += 1
            largest[kind] = max(largest[kind], size)
    conn.close()
    out.put({"times": times, "statuses": dict(statuses), "largest": largest})


def reloaders(web_port: int, alias: str, clients: int, stop: Any, out: Any) -> None:
    """Runs in its own process: `clients` visitors from 127.0.0.21, .22, ..."""
    results: queue.Queue[dict[str, Any]] = queue.Queue()
    threads = [
        threading.Thread(target=reload_loop, args=(web_port, alias, f"127.0.0.{21 + i}", stop, results))
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged: dict[str, Any] = {"times": {"page": [], "json": []}, "statuses": collections.Counter(), "largest": {}}
    while not results.empty():
        r = results.get()
        for kind in ("page", "json"):
            merged["times"][kind] += r["times"][kind]
            merged["largest"][kind] = max(merged["largest"].get(kind, 0), r["largest"][kind])
        merged["statuses"].update(r["statuses"])
    merged["statuses"] = dict(merged["statuses"])
    out.put(merged)


class Bystander:
    """Two sampling threads: SMTP greeting latency and test creation latency, tagged by phase."""

    def __init__(self, smtp_port: int, web_port: int, interval: float = 0.1) -> None:
        self.smtp_port, self.web_port, self.interval = smtp_port, web_port, interval
        self.phase = "quiet"
        self.samples: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        self.statuses: collections.Counter[str] = collections.Counter()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(w,)) for w in (self._greeting, self._create)]
        self.created = 0

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join()

    def _loop(self, sample: Any) -> None:
        while not self.done.is_set():
            phase = self.phase
            t0 = time.perf_counter()
            outcome = sample()
            self.samples[phase][sample.__name__.strip("_")].append((time.perf_counter() - t0) * 1000)
            self.statuses[f"{sample.__name__.strip('_')} {outcome}"] += 1
            self.done.wait(self.interval)

    def _greeting(self) -> str:
        try:
            with socket.create_connection((HOST, self.smtp_port), TIMEOUT, ("127.0.0.2", 0)) as sock:
                f = sock.makefile("rb")
                code = f.readline()[:3].decode() or "closed"
                sock.sendall(b"QUIT\r\n")
                return code
        except OSError as e:
            return type(e).__name__

    def _create(self) -> str:
        self.created += 1
        source = f"127.0.2.{1 + self.created % 250}"  # 10 creations per address per minute by default
        conn = http.client.HTTPConnection(HOST, self.web_port, timeout=TIMEOUT, source_address=(source, 0))
        try:
            conn.request("POST", "/api/tests")
            response = conn.getresponse()
            response.read()
            return str(response.status)
        except (OSError, http.client.HTTPException) as e:
            return type(e).__name__
        finally:
            conn.close()


def stored(db: Path, alias: str) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        deliveries = conn.execute("SELECT count(*) FROM deliveries WHERE alias = ?", (alias,)).fetchone()[0]
        sessions = conn.execute("SELECT count(DISTINCT session_id) FROM deliveries WHERE alias = ?", (alias,))
        named = conn.execute("SELECT count(*) FROM sessions WHERE alias = ?", (alias,)).fetchone()[0]
        return {"deliveries": int(deliveries), "sessions_with_deliveries": int(sessions.fetchone()[0]),
                "sessions_naming_it": int(named)}  # fmt: skip


LONG_HELO = ".".join(["h" * 60] * 4)[:250]  # stored up to 255 characters
LONG_FROM = "f" * 64 + "@" + ".".join(["m" * 60] * 3) + ".example"
SESSIONS_WITHOUT_MAIL = 20  # havedane.store.base: the oldest such sessions a report keeps


def fill(port: int, rcpts: list[str], sessions: int, max_deliveries: int) -> dict[str, Any]:
    """(c): fill a test to its limits, from 127.0.0.11 (see the module's docstring)."""
    codes: collections.Counter[str] = collections.Counter()

    def connection() -> smtplib.SMTP:
        client = smtplib.SMTP(HOST, port, timeout=TIMEOUT, source_address=("127.0.0.11", 0))
        client.ehlo(LONG_HELO)
        return client

    for _ in range(sessions):
        with connection() as client:
            client.mail(LONG_FROM)
            for rcpt in rcpts:
                codes[f"RCPT {client.rcpt(rcpt)[0]}"] += 1
    for _ in range(2 * SESSIONS_WITHOUT_MAIL):
        with connection():
            pass
    with connection() as client:
        for n in range(max_deliveries):
            try:
                refused = client.sendmail(LONG_FROM, rcpts, f"Message-ID: <{n}.{'i' * 200}@fill.example>\r\n\r\nx\r\n")
                codes["message 250"] += 1
                codes["RCPT refused"] += len(refused)
            except smtplib.SMTPException as e:
                codes[f"message {type(e).__name__}"] += 1
                break
    return dict(codes)


def time_requests(web_port: int, alias: str, count: int, seconds: float) -> dict[str, Any]:
    """(c): sequential requests, one client, the server otherwise quiet, CACHE_PAUSE apart so that
    each one is built, not served from the response cache."""
    result: dict[str, Any] = {}
    for kind, path in (("json", f"/api/tests/{alias}"), ("page", f"/t/{alias}")):
        times: list[float] = []
        size = status = 0
        deadline = time.monotonic() + seconds / 2
        while len(times) < count and time.monotonic() < deadline:
            time.sleep(CACHE_PAUSE)
            conn = http.client.HTTPConnection(HOST, web_port, timeout=TIMEOUT * 2)
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            size = len(response.read())
            times.append((time.perf_counter() - t0) * 1000)
            status = response.status
            conn.close()
        result[kind] = {
            "n": len(times),
            "median_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1),
            "bytes": size,
            "status": status,
        }
    return result


def abuse(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    server = start_server(tmp / "a", env)
    try:
        assert server.proc is not None
        test = new_test(server)
        alias = test["alias"]
        rcpts = list(test["addresses"].values())
        bystander = Bystander(server.smtp_port, server.web_port)
        bystander.start()
        time.sleep(args.quiet_seconds)
        ctx = multiprocessing.get_context("spawn")
        flood_out, reload_out, stop_reloading = ctx.Queue(), ctx.Queue(), ctx.Event()
        bounds = (args.flood_seconds, args.max_deliveries)
        flooder = ctx.Process(target=flood, args=(server.smtp_port, rcpts, *bounds, flood_out))
        reloading = ctx.Process(target=reloaders, args=(server.web_port, alias, 3, stop_reloading, reload_out))
        log(f"(a) flooding test {alias} for up to {args.flood_seconds:g} s")
        bystander.phase = "flood"
        flooder.start()
        try:
            flooded = flood_out.get(timeout=args.head_start)
        except queue.Empty:
            flooded = None
        log("(a) 3 clients start reloading its page and JSON")
        bystander.phase = "flood+reload"
        reloading.start()
        if flooded is None:
            flooded = flood_out.get(timeout=args.flood_seconds + TIMEOUT * 4)
        flooder.join(10)
        log(f"(a) flood stopped ({flooded['stopped_by']}); reloaders go on for {args.hold_seconds:g} s")
        bystander.phase = "hold"
        time.sleep(args.hold_seconds)
        stop_reloading.set()
        bystander.stop()
        reloaded = reload_out.get(timeout=TIMEOUT * 6)
        reloading.join(10)
        log("(c) filling a new test to every limit")
        heavy = new_test(server)
        filled = fill(server.smtp_port, list(heavy["addresses"].values()), args.fill_sessions, args.fill_messages)
        time.sleep(1)  # let the server settle before timing (c)
        log("(c) timing the heaviest test's JSON and page on the quiet server")
        heaviest = time_requests(server.web_port, heavy["alias"], args.requests, args.heavy_seconds)
        heaviest["stored"] = stored(tmp / "a" / "havedane.sqlite3", heavy["alias"])
        heaviest["fill"] = filled
        flooded["stored"] = stored(tmp / "a" / "havedane.sqlite3", alias)
        reload_summary = {k: summary(v) for k, v in reloaded["times"].items()}
        return {
            "flood": flooded,
            "reloaders": {"ms": reload_summary, "statuses": reloaded["statuses"], "largest": reloaded["largest"]},
            "bystander": {
                phase: {kind: summary(v) for kind, v in kinds.items()} for phase, kinds in bystander.samples.items()
            },
            "bystander_statuses": dict(bystander.statuses),
            "heaviest": heaviest,
        }
    finally:
        server.stop()


# -- (b) memory: connections holding DATA in flight ----------------------------------------


def queued_bytes(port: int) -> int:
    """Bytes still in the kernel on connections to `port`: unread at the server, unsent at clients."""
    total = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            total += rx if local_port == port else tx if remote_port == port else 0
    return total


async def hold_data(port: int, rcpt: str, source: str, size: int, abort: asyncio.Event, sent: list[int]) -> Any:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    for command, code in ((b"", b"220"), (b"EHLO mem.example\r\n", b"250"), (b"MAIL FROM:<m@mem.example>\r\n", b"250"),
                          (b"RCPT TO:<%s>\r\n" % rcpt.encode(), b"250"), (b"DATA\r\n", b"354")):  # fmt: skip
        writer.write(command)
        while True:
            line = await reader.readline()
            if not line.startswith(code):
                raise ConnectionError(f"{command!r}: {line!r}")
            if line[3:4] != b"-":
                break
    chunk = b"\r\n" * 32768
    for _ in range(size // len(chunk)):
        if abort.is_set():
            return writer, False
        writer.write(chunk)
        await writer.drain()
        sent[0] += len(chunk)
    return writer, True


async def memory(port: int, pid: int, rcpt: str, args: argparse.Namespace) -> dict[str, Any]:
    baseline = rss_mb(pid)[0]
    abort = asyncio.Event()
    sent = [0]
    peak = baseline
    deadline = time.monotonic() + args.memory_seconds

    async def monitor() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb(pid)[0])
            if peak > args.rss_cap_mb or time.monotonic() > deadline:
                abort.set()
            await asyncio.sleep(0.05)

    gate = asyncio.Semaphore(10)  # ten connections sending at a time; the others hold what they sent

    async def one(i: int) -> Any:
        async with gate:
            if abort.is_set():
                return None
            return await hold_data(port, rcpt, f"127.0.1.{1 + i // 20}", args.data_bytes, abort, sent)

    watcher = asyncio.create_task(monitor())
    results = await asyncio.gather(*(one(i) for i in range(args.connections)), return_exceptions=True)
    held = [w for w in results if w is not None and not isinstance(w, BaseException)]
    writers = [w for w, _ in held]
    errors = collections.Counter(str(e)[:80] for e in results if isinstance(e, BaseException))
    settle = time.monotonic() + 30
    while queued_bytes(port) and time.monotonic() < settle:  # until the server has read what was sent
        await asyncio.sleep(0.1)
    in_kernel = queued_bytes(port)
    await asyncio.sleep(2)  # hold, sampling
    watcher.cancel()
    rss, hwm = rss_mb(pid)
    peak = max(peak, rss)
    read = sent[0] - in_kernel
    for w in writers:
        w.transport.abort()
    return {
        "connections_requested": args.connections,
        "connections_open": len(writers),
        "connections_holding_all": sum(complete for _, complete in held),
        "errors": dict(errors),
        "stopped_early": sent[0] < args.connections * (args.data_bytes // 65536 * 65536),
        "data_sent_mb": round(sent[0] / 2**20, 1),
        "data_read_by_server_mb": round(read / 2**20, 1),
        "rss_baseline_mb": round(baseline, 1),
        "rss_peak_mb": round(max(peak, hwm), 1),
        "rss_per_mb_of_data": round((max(peak, hwm) - baseline) / max(read / 2**20, 0.001), 1),
    }


def memory_phase(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    server = start_server(tmp / "b", env)
    try:
        assert server.proc is not None
        rcpt = server.new_test()["addresses"]["do"]
        log(f"(b) {args.connections} connections x {args.data_bytes / 2**20:.2f} MB of blank lines in DATA")
        return asyncio.run(memory(server.smtp_port, server.proc.pid, rcpt, args))
    finally:
        server.stop()


# -- report ---------------------------------------------------------------------------


def lat(s: dict[str, Any]) -> str:
    return f"p50 {s['p50']} ms, p99 **{s['p99']}** ms (max {s['max']}, n={s['n']})" if s.get("n") else "no samples"


def abuse_rows(a: dict[str, Any]) -> list[tuple[str, str, str]]:
    f, quiet = a["flood"], a["bystander"].get("quiet", {})
    rows = [
        ("bystander SMTP greeting, quiet server", "—", lat(quiet.get("greeting", {}))),
        ("bystander `POST /api/tests`, quiet server", "—", lat(quiet.get("create", {}))),
    ]
    for phase, label in (
        ("flood", "during the flood alone"),
        ("flood+reload", "during the flood + 3 reloaders"),
        ("hold", "after the flood, 3 reloaders"),
    ):
        by = a["bystander"].get(phase, {})
        rows.append((f"bystander SMTP greeting, {label}", "p99 < 100 ms", lat(by.get("greeting", {}))))
        rows.append((f"bystander `POST /api/tests`, {label}", "p99 < 100 ms", lat(by.get("create", {}))))
    stored = f.get("stored", a["heaviest"]["stored"])  # runs before (c) filled its own test: the flooded one
    rows.append(
        (
            "the flood (one client)",
            "bounded",
            f"{f['acknowledged_deliveries']:,} deliveries acknowledged ({stored['deliveries']:,} stored) in "
            f"{f['seconds']} s: {f['messages']:,} messages on {f['connections']} connection(s); stopped by "
            f"{f['stopped_by']}; refusals {f['refusals'] or 'none'}",
        )
    )
    r = a["reloaders"]
    rows.append(
        (
            "reloaders (3 clients), from the head start on",
            "—",
            f"page {lat(r['ms']['page'])}; JSON {lat(r['ms']['json'])}; statuses {r['statuses']}",
        )
    )
    return rows


def memory_row(b: dict[str, Any]) -> tuple[str, str, str]:
    early = "; stopped sending early (RSS cap or time bound)" if b["stopped_early"] else ""
    return (
        f"RSS, {b['connections_requested']} connections x ~1 MB DATA in flight",
        "< 600 MB",
        f"peak **{b['rss_peak_mb']:,} MB** (baseline {b['rss_baseline_mb']} MB) with {b['connections_open']} "
        f"connections open, {b['connections_holding_all']} of them holding all their DATA; "
        f"{b['data_read_by_server_mb']} MB read by the server: {b['rss_per_mb_of_data']} MB of RSS per MB of DATA"
        f"{early}" + (f"; errors {b['errors']}" if b["errors"] else ""),
    )


def heaviest_rows(h: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    if "fill" in h:
        st = h["stored"]
        rows.append(
            (
                "heaviest test (c): what it holds",
                "every per-test limit",
                f"{st['deliveries']} deliveries, {st['sessions_naming_it']} connections naming it, plus "
                f"{2 * SESSIONS_WITHOUT_MAIL} without MAIL from its sender; replies {h['fill']}",
            )
        )
    for kind, label in (("json", "`GET /api/tests/{alias}`"), ("page", "`GET /t/{alias}`")):
        k = h[kind]
        rows.append(
            (
                f"heaviest test: {label}",
                "< 50 ms",
                f"median **{k['median_ms']} ms**, max {k['max_ms']} ms (n={k['n']}), {k['bytes'] / 1e6:.2f} MB, "
                f"status {k['status']}",
            )
        )
    return rows


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    if "abuse" in r:
        rows += abuse_rows(r["abuse"])
    if "memory" in r:
        rows.append(memory_row(r["memory"]))
    if "abuse" in r:
        rows += heaviest_rows(r["abuse"]["heaviest"])
    m = r["machine"]
    head = (
        f"machine: {m['date']}, commit {m['commit']}, nproc {m['nproc']}, {m['cpu']}, {m['memory_gib']} GiB, "
        f"load average at start {m['load_average_at_start']}, at end {r.get('load_average_at_end')}, "
        f"Python {m['python']}, {m['openssl']}, "
        f"aiosmtpd {m['aiosmtpd']}, uvicorn {m['uvicorn']}\n"
        f"server env: {r['env'] or 'defaults'}\n\n| figure | target | measured |\n| --- | --- | --- |\n"
    )
    return head + "\n".join(f"| {a} | {t} | {v} |" for a, t, v in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet-seconds", type=float, default=3, help="bystander samples before the flood (3)")
    parser.add_argument("--flood-seconds", type=float, default=30, help="bound of the flood (30)")
    parser.add_argument("--max-deliveries", type=int, default=1_000_000, help="count bound of the flood (1e6)")
    parser.add_argument("--head-start", type=float, default=15, help="flood alone before the reloaders (15)")
    parser.add_argument("--hold-seconds", type=float, default=10, help="reloading after the flood (10)")
    parser.add_argument("--fill-sessions", type=int, default=199, help="(c) connections naming the test (199)")
    parser.add_argument("--fill-messages", type=int, default=60, help="(c) messages to every probe (60)")
    parser.add_argument("--requests", type=int, default=7, help="(c) requests timed per kind (7)")
    parser.add_argument("--heavy-seconds", type=float, default=50, help="(c) bound for all of them (50)")
    parser.add_argument("--connections", type=int, default=200, help="(b) connections holding DATA (200)")
    parser.add_argument("--data-bytes", type=int, default=1_000_000 // 65536 * 65536, help="(b) per connection")
    parser.add_argument("--rss-cap-mb", type=float, default=2000, help="(b) stop sending beyond this RSS (2000)")
    parser.add_argument("--memory-seconds", type=float, default=60, help="(b) bound of the sending (60)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server env")
    parser.add_argument("--skip", choices=["abuse", "memory"], action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--table", metavar="FILE", help="only print the table of a saved --json output")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    env = dict(item.split("=", 1) for item in args.env)
    result: dict[str, Any] = {"machine": machine(), "env": env, "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        if "memory" not in args.skip:
            result["memory"] = memory_phase(args, env, Path(tmp))
        if "abuse" not in args.skip:
            result["abuse"] = abuse(args, env, Path(tmp))
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

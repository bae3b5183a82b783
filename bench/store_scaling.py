"""Store scaling (issue 7): deliveries/s with two receiver processes on PostgreSQL vs one
process on SQLite, and SSE latency across processes.

    .venv/bin/python bench/store_scaling.py [--seconds 20] [--clients 16] [--synchronous-commit on|off]

Starts everything itself on loopback and removes it afterwards: a PostgreSQL cluster
(tests/pg.py: initdb into a temporary directory; PostgreSQL's default durability,
fsync=on and synchronous_commit=on, unless told otherwise), `havedane serve` processes,
and the load generator of bench/smtp_load.py in separate processes (each message: a new
connection, STARTTLS with a full handshake, three recipients). Runs:

- sqlite, 1 process: `havedane serve` (receiver and web in one process), SQLite;
- postgresql, 2 receivers: two `serve --role smtp` and one `serve --role web`, the
  clients split evenly between the two receivers;
- postgresql, 1 receiver: the same with one receiver (how much the second one adds).

During each load run, a probe sends one more message every 0.1-0.4 s through a receiver
and times it from its `250` (at the client) to the SSE `update` that shows it (on a
stream opened at the web process). Then the same probe alone (idle): SSE latency across
processes on PostgreSQL (LISTEN/NOTIFY) and on SQLite (`--role smtp` and `--role web`
on one file, PRAGMA data_version polling). Every run checks that each acknowledged
delivery is in the database. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import smtplib
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

import smtp_load  # noqa: E402  (the load generator of bench/core.sh)

import pg  # noqa: E402  (tests/pg.py: the throw-away PostgreSQL)
from helpers import Serve, make_setup  # noqa: E402

ENV = {
    "HAVEDANE_SMTP_MAX_CONNECTIONS_PER_CLIENT": "1000",  # the generator is one address
    "HAVEDANE_LIMITS_TESTS_PER_MINUTE": "1000",
    "HAVEDANE_SMTP_MAX_DELIVERIES_PER_PROBE": "1000000000",  # every message goes to one test
    "HAVEDANE_SMTP_MAX_SESSIONS_PER_TEST": "1000000000",
    "HAVEDANE_VERDICT_GRACE": "3600",
}
PROBES = ("do", "dont", "wrong")


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Stream:
    """An SSE stream of one test, read by a thread: arrival time of each message id."""

    def __init__(self, url: str) -> None:
        self.arrived: dict[str, float] = {}
        self._changed = threading.Condition()
        self._open = threading.Event()
        threading.Thread(target=self._read, args=(url,), daemon=True).start()
        assert self._open.wait(10), "stream did not open"

    def _read(self, url: str) -> None:
        try:
            with httpx.stream("GET", url, timeout=httpx.Timeout(10, read=None)) as response:
                self._open.set()
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "update":
                        now = time.monotonic()
                        body = json.loads(line[5:])
                        with self._changed:
                            for d in body["probes"]["do"]["deliveries"]:
                                self.arrived.setdefault(d["message_id"], now)
                            self._changed.notify_all()
        except httpx.HTTPError:
            pass

    def wait_for(self, mid: str, timeout: float = 10) -> float | None:
        with self._changed:
            self._changed.wait_for(lambda: mid in self.arrived, timeout)
            return self.arrived.get(mid)


class Probe:
    """Sends one message at a time through `ports` (in turn) and times 250 -> SSE update."""

    def __init__(self, web: str, ports: list[int]) -> None:
        test = httpx.post(web + "/api/tests").json()
        self.alias, self.rcpts = test["alias"], [test["addresses"][p] for p in PROBES]
        self.stream = Stream(f"{web}/api/tests/{self.alias}/events")
        self.ports = ports
        self.latencies: list[float] = []
        self.missing = 0
        self._n = 0

    def once(self) -> None:
        mid = f"<probe{self._n}.{self.alias}@bench.example>"
        port = self.ports[self._n % len(self.ports)]
        self._n += 1
        with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example", timeout=30) as client:
            client._host = "do.x.test"  # type: ignore[assignment]  # sent as SNI
            client.starttls(context=insecure())
            body = f"Subject: probe\r\nMessage-ID: {mid}\r\n\r\nx\r\n".encode()
            client.sendmail("probe@bench.example", self.rcpts, body)
            acked = time.monotonic()
        arrived = self.stream.wait_for(mid)
        if arrived is None:
            self.missing += 1
        else:
            self.latencies.append(arrived - acked)

    def run(self, count: int) -> None:
        """`count` messages at random intervals (a fixed one could lock onto a polling period)."""
        for _ in range(count):
            self.once()
            time.sleep(random.uniform(0.05, 0.25))

    def background(self, stop: threading.Event) -> threading.Thread:
        def loop() -> None:
            while not stop.is_set():
                self.once()
                stop.wait(random.uniform(0.1, 0.4))

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def summary(self) -> str:
        if not self.latencies:
            return f"no samples ({self.missing} missing)"
        ms = sorted(x * 1000 for x in self.latencies)
        p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
        missing = f", {self.missing} missing" if self.missing else ""
        return f"p50 {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms (n={len(ms)}{missing})"


def load(ports: list[int], web: str, clients: int, seconds: float) -> tuple[str, int, float, int, int]:
    """smtp_load's generator: one process per receiver port, clients split evenly."""
    test = httpx.post(web + "/api/tests").json()
    rcpts = [test["addresses"][p] for p in PROBES]
    out: multiprocessing.Queue[tuple[int, int, int]] = multiprocessing.Queue()
    gens = [(ports[i % len(ports)], clients // 2 + (i < clients % 2)) for i in range(2)]
    procs = [
        multiprocessing.Process(target=smtp_load.run_process, args=("127.0.0.1", port, rcpts, n, seconds, out))
        for port, n in gens
    ]
    start = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - start
    return test["alias"], sum(r[0] for r in results), elapsed, sum(r[1] for r in results), sum(r[2] for r in results)


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system CPU time of a process (with its exited, waited-for children when `reaped`)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu(server: pg.PostgresServer) -> float:
    """The whole cluster: postmaster, its live backends and the ones that have exited."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(entry.name))
            except (FileNotFoundError, IndexError, ValueError):
                continue
    return cpu_seconds(postmaster, reaped=True) + sum(cpu_seconds(c) for c in children)


def cpu_per_message(
    roles: list[str], before: list[float], after: list[float], messages: int, with_db: bool
) -> dict[str, float]:
    """CPU milliseconds per message by part (processes of one role summed): what each host needs."""
    names = {"all": "havedane", "smtp": "receivers", "web": "web"}
    parts: dict[str, float] = {}
    for role, b, a in zip([*roles, "postgresql"], before, after, strict=True):
        if role != "postgresql" or with_db:
            name = names.get(role, role)
            parts[name] = parts.get(name, 0.0) + 1000 * (a - b) / max(messages, 1)
    return {name: round(ms, 2) for name, ms in parts.items()}


def stored(url: str, alias: str) -> int:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute("SELECT count(*) FROM deliveries WHERE alias = ?", (alias,)).fetchone()[0])
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM deliveries WHERE alias = %s", (alias,)).fetchone()
        return int(row[0]) if row else 0


@contextmanager
def processes(config: Path, env: dict[str, str], roles: list[str]) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    try:
        for role in roles:
            started.append(Serve(config, env={**ENV, **env}, extra_args=["--role", role]).start())
        yield started
    finally:
        for p in started:
            p.stop()


def throughput(
    name: str, url: str, config: Path, env: dict[str, str], roles: list[str], args: Any, db: pg.PostgresServer | None
) -> dict[str, Any]:
    with processes(config, env, roles) as procs:
        web = next(p.web for p, r in zip(procs, roles, strict=True) if r in ("all", "web"))
        ports = [p.smtp_port for p, r in zip(procs, roles, strict=True) if r in ("all", "smtp")]
        probe = Probe(web, ports)
        stop = threading.Event()
        prober = probe.background(stop)
        pids = [p.proc.pid for p in procs if p.proc is not None]
        before = [cpu_seconds(pid) for pid in pids] + [postgres_cpu(db) if db else 0.0]
        alias, deliveries, elapsed, messages, errors = load(ports, web, args.clients, args.seconds)
        after = [cpu_seconds(pid) for pid in pids] + [postgres_cpu(db) if db else 0.0]
        stop.set()
        prober.join(30)
        time.sleep(1)
        in_db = stored(url, alias)
    row = {
        "name": name,
        "deliveries/s": deliveries / elapsed,
        "messages/s": messages / elapsed,
        "acknowledged": deliveries,
        "stored": in_db,
        "errors": errors,
        "sse under load": probe.summary(),
        # CPU milliseconds per message, by part: what each host would need per message
        "cpu ms/message": cpu_per_message(roles, before, after, messages, db is not None),
    }
    print(json.dumps(row), flush=True)
    if in_db < deliveries:
        raise SystemExit(f"{name}: LOST DELIVERIES ({in_db} stored < {deliveries} acknowledged)")
    return row


def idle_latency(name: str, config: Path, env: dict[str, str], count: int) -> str:
    with processes(config, env, ["web", "smtp"]) as (web, rx):
        probe = Probe(web.web, [rx.smtp_port])
        probe.run(3)  # warm up (TLS contexts, prepared statements)
        probe.latencies.clear()
        probe.run(count)
    print(f"{name}: {probe.summary()}", flush=True)
    return probe.summary()


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
    )
    load_avg = " ".join(open("/proc/loadavg").read().split()[:3])
    bindir = pg.find_bindir()
    postgres = [str(bindir / "postgres"), "--version"] if bindir else ["true"]
    pg_version = subprocess.run(postgres, capture_output=True, text=True).stdout.strip()
    return (
        f"nproc {os.cpu_count()}, {model}, load average at start {load_avg}; Python {platform.python_version()}, "
        f"{ssl.OPENSSL_VERSION}, {pg_version}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20, help="length of each load run")
    ap.add_argument("--clients", type=int, default=16, help="concurrent SMTP clients in all")
    ap.add_argument("--synchronous-commit", choices=["on", "off"], default="on", help="PostgreSQL setting")
    ap.add_argument("--probes", type=int, default=50, help="messages for each idle latency figure")
    args = ap.parse_args()
    print(machine(), flush=True)
    bindir = pg.find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
    server = pg.PostgresServer(bindir, {"synchronous_commit": args.synchronous_commit}).start()
    rows: list[dict[str, Any]] = []
    latency: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="havedane-bench-") as tmp:
            base = Path(tmp)

            def setup(name: str, url: str | None) -> tuple[Path, dict[str, str], str]:
                config = make_setup(base / name)
                env = {"HAVEDANE_STORE_URL": url} if url else {}
                if url:
                    subprocess.run(
                        [sys.executable, "-m", "havedane", "db", "upgrade", "--config", str(config)],
                        env={**os.environ, **env}, check=True, capture_output=True,
                    )  # fmt: skip
                return config, env, url or f"sqlite:///{config.parent / 'havedane.sqlite3'}"

            config, env, url = setup("sqlite", None)
            rows.append(throughput("SQLite, 1 process (receiver + web)", url, config, env, ["all"], args, None))
            config, env, url = setup("pg2", server.create_database())
            rows.append(throughput("PostgreSQL, 2 receiver processes + 1 web", url, config, env,
                                   ["web", "smtp", "smtp"], args, server))  # fmt: skip
            config, env, url = setup("pg1", server.create_database())
            rows.append(
                throughput("PostgreSQL, 1 receiver process + 1 web", url, config, env, ["web", "smtp"], args, server)
            )
            config, env, url = setup("pg-idle", server.create_database())
            latency["PostgreSQL (LISTEN/NOTIFY)"] = idle_latency("PostgreSQL", config, env, args.probes)
            config, env, url = setup("sqlite-idle", None)
            latency["SQLite, 2 processes on one file (PRAGMA data_version)"] = idle_latency(
                "SQLite", config, env, args.probes
            )
    finally:
        server.stop()

    print()
    print(
        f"{args.clients} clients, {args.seconds:.0f} s per run, PostgreSQL synchronous_commit={args.synchronous_commit}"
    )
    print()
    print("| setup | deliveries/s | messages/s | acknowledged = stored | CPU ms per message | SSE latency under load |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cpu = ", ".join(f"{part} {ms}" for part, ms in r["cpu ms/message"].items())
        print(
            f"| {r['name']} | **{r['deliveries/s']:,.0f}** | {r['messages/s']:,.0f} | "
            f"{r['acknowledged']:,} = {r['stored']:,} | {cpu} | {r['sse under load']} |"
        )
    print()
    print("| SSE latency across processes, idle (250 at the client -> update on the stream) | |")
    print("| --- | --- |")
    for name, summary in latency.items():
        print(f"| {name} | {summary} |")


if __name__ == "__main__":
    main()

"""What havedane adds to its stack's floor (issue 13), measured side by side in one run.

Starts on loopback, with the same certificate (the ECDSA chain of one `havedane init`):

- `havedane serve` (SQLite, receiver and web server in one process, uvloop),
- bench/bare_smtp.py: bare aiosmtpd, STARTTLS, each message committed to SQLite WAL
  before its `250`,
- bench/bare_web.py: bare Starlette on uvicorn returning the bytes havedane returns for
  `GET /api/tests/{alias}` (fetched from it once, compared before the first round).

Then alternating rounds, each: havedane SMTP, bare SMTP, havedane HTTP, bare HTTP (every
other round in the reverse order, so a drift of the machine's load falls on both sides).
SMTP load: bench/smtp_load.py (16 clients, a new connection and a full STARTTLS handshake
per message, 3 recipients); HTTP load: `wrk -t1 -c32`. Prints each round's figures, the
CPU milliseconds the server process spent per delivery / per request (from /proc: less
noisy than throughput on a shared machine), and the medians and ratios.

Per-test caps: every havedane SMTP round floods one new test (smtp_load.py creates it), so
the per-test caps ([smtp] max_deliveries_per_probe, max_sessions_per_test) and the
per-client ones ([smtp] max_connections_per_client, [limits] tests_per_minute) are raised
through HAVEDANE_* variables, as bench/core.sh does; the checks themselves still run.

Needs wrk (`apt-get install -y wrk`). Bounded in time (about rounds × 4 × seconds plus
start-up), loopback only; it stops only the processes it started.

    .venv/bin/python bench/floor.py [--rounds 5] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import smtplib
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
HAVEDANE = str(ROOT / ".venv" / "bin" / "havedane")
HD_SMTP, HD_WEB, BARE_SMTP, BARE_WEB = 2725, 8281, 2726, 8282
CAPS = {
    "HAVEDANE_SMTP_MAX_CONNECTIONS_PER_CLIENT": "1000",
    "HAVEDANE_LIMITS_TESTS_PER_MINUTE": "1000",
    "HAVEDANE_SMTP_MAX_DELIVERIES_PER_PROBE": "1000000000",
    "HAVEDANE_SMTP_MAX_SESSIONS_PER_TEST": "1000000000",
}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads (proc(5): fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_port(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start (code {proc.returncode})")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError as e:
            if getattr(e, "code", None):  # an HTTP error status: it is up
                return
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start")


def wait_smtp(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start (code {proc.returncode})")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as s:
                s.noop()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start")


def http_test(web: str, port: int) -> str:
    """A test holding a delivery on `do` and `dont` and its session: what a status read shows."""
    req = urllib.request.Request(web + "/api/tests", method="POST")
    alias: str = json.load(urllib.request.urlopen(req))["alias"]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port) as s:
        s._host = "do.x.test"  # type: ignore[attr-defined]  # the SNI smtplib sends
        s.starttls(context=ctx)
        rcpts = [f"test@{alias}.do.x.test", f"test@{alias}.dont.x.test"]
        s.sendmail("a@sender.example", rcpts, b"Subject: x\r\n\r\nx\r\n")
    time.sleep(0.5)
    return alias


def smtp_round(port: int, seconds: float, clients: int, pid: int, extra: list[str]) -> tuple[float, float]:
    """(deliveries/s, server CPU ms per delivery)."""
    cpu = cpu_seconds(pid)
    out = subprocess.run(
        [PY, str(ROOT / "bench" / "smtp_load.py"), "--smtp", f"127.0.0.1:{port}", "--web", f"http://127.0.0.1:{HD_WEB}",
         "--clients", str(clients), "--seconds", str(seconds), *extra],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    used = cpu_seconds(pid) - cpu
    rate = float(re.search(r"deliveries/s=(\d+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r" deliveries=(\d+)", out).group(1))  # type: ignore[union-attr]
    if "errors=0" not in out:
        print(f"  (load generator reported errors: {out.strip()})")
    return rate, 1000 * used / max(total, 1)


def http_round(url: str, seconds: float, connections: int, pid: int) -> tuple[float, float]:
    """(requests/s, server CPU ms per request)."""
    cpu = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", url],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    used = cpu_seconds(pid) - cpu
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  (wrk reported errors: {out.strip()})")
    return rate, 1000 * used / max(requests, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=16, help="concurrent SMTP clients")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--only", choices=["smtp", "http"], help="run one half only")
    ap.add_argument("--profile", type=Path, help="instead of rounds: py-spy each havedane leg once, stacks here")
    args = ap.parse_args()
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="havedane-floor-") as tmp:
        d = Path(tmp)
        try:
            run(args, d, started)
        finally:
            for proc in started:
                proc.terminate()
            for proc in started:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def run(args: argparse.Namespace, d: Path, started: list[subprocess.Popen[bytes]]) -> None:
    subprocess.run([HAVEDANE, "init", "--domain", "x.test", "--dir", str(d)], check=True, capture_output=True)
    log = open(d / "serve.log", "wb")  # noqa: SIM115 - open while the server runs
    hd = subprocess.Popen(
        [HAVEDANE, "serve", "--config", str(d / "havedane.toml"), "--smtp-listen", f"127.0.0.1:{HD_SMTP}",
         "--web-listen", f"127.0.0.1:{HD_WEB}"],
        env={**os.environ, **CAPS}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    started.append(hd)
    bare_smtp = subprocess.Popen(
        [PY, str(ROOT / "bench" / "bare_smtp.py"), "--tls-dir", str(d / "tls"), "--listen", f"127.0.0.1:{BARE_SMTP}",
         "--db", str(d / "bare.sqlite3")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    started.append(bare_smtp)
    web = f"http://127.0.0.1:{HD_WEB}"
    wait_port(web + "/", hd, "havedane serve")
    wait_smtp(BARE_SMTP, bare_smtp, "bare_smtp.py")
    alias = http_test(web, HD_SMTP)
    hd_url = f"{web}/api/tests/{alias}"
    body = urllib.request.urlopen(hd_url).read()
    (d / "body.json").write_bytes(body)
    bare_web = subprocess.Popen(
        [PY, str(ROOT / "bench" / "bare_web.py"), "--body", str(d / "body.json"), "--listen", f"127.0.0.1:{BARE_WEB}"]
    )
    started.append(bare_web)
    bare_url = f"http://127.0.0.1:{BARE_WEB}/api/tests/{alias}"
    wait_port(bare_url, bare_web, "bare_web.py")
    if urllib.request.urlopen(bare_url).read() != body:
        raise SystemExit("the bare web app does not return havedane's bytes")
    bare_rcpts = [a for p in ("do", "dont", "wrong") for a in ("--rcpt", f"bench@{p}.x.test")]
    legs = {
        "havedane smtp": lambda s: smtp_round(HD_SMTP, s, args.clients, hd.pid, ["--db", str(d / "havedane.sqlite3")]),
        "bare smtp": lambda s: smtp_round(BARE_SMTP, s, args.clients, bare_smtp.pid, bare_rcpts),
        "havedane http": lambda s: http_round(hd_url, s, args.connections, hd.pid),
        "bare http": lambda s: http_round(bare_url, s, args.connections, bare_web.pid),
    }
    if args.only:
        legs = {k: v for k, v in legs.items() if k.endswith(args.only)}
    machine(len(body))
    for leg in legs.values():  # warm-up, not counted
        leg(2)
    if args.profile:
        pids = {"havedane smtp": hd.pid, "bare smtp": bare_smtp.pid, "havedane http": hd.pid, "bare http": bare_web.pid}
        for name in legs:
            profile(pids[name], legs[name], args.seconds, args.profile / (name.replace(" ", "-") + ".txt"))
        return
    figures: dict[str, list[tuple[float, float]]] = {k: [] for k in legs}
    for r in range(args.rounds):
        order = list(legs) if r % 2 == 0 else list(reversed(legs))
        for name in order:
            figures[name].append(legs[name](args.seconds))
        load = os.getloadavg()[0]
        line = "  ".join(f"{k} {figures[k][-1][0]:,.0f}/s ({figures[k][-1][1]:.3f} ms)" for k in legs)
        print(f"round {r + 1}: {line}  load {load:.2f}", flush=True)
    (rows,) = sqlite3.connect(d / "bare.sqlite3").execute("SELECT count(*) FROM deliveries").fetchone()
    print(f"bare receiver: {rows} rows committed")
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in figures.items()}
    for k, (rate, ms) in med.items():
        print(f"median {k}: {rate:,.0f}/s, server CPU {ms:.3f} ms each")
    for kind in ("smtp", "http"):
        if f"havedane {kind}" in med:
            hd_rate, hd_ms = med[f"havedane {kind}"]
            bare_rate, bare_ms = med[f"bare {kind}"]
            print(f"ratio {kind}: {hd_rate / bare_rate:.2f}x throughput, {bare_ms / hd_ms:.2f}x CPU efficiency")


def profile(pid: int, leg: Callable[[float], tuple[float, float]], seconds: float, out: Path) -> None:
    """py-spy (`pip install py-spy`) samples the server during one leg, only while a thread
    holds the GIL (waiting threads and OpenSSL's handshake arithmetic, which releases it, are
    not counted): collapsed stacks in `out`, then the functions with the largest share of
    the samples, inclusive and self."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--format", "raw", "--rate", "250", "--nolineno", "--threads", "--gil", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    rate, ms = leg(seconds - 1)
    spy.wait(timeout=60)
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]  # the first is the thread
        n = int(count)
        total += n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
    print(f"== {out.stem}: {rate:,.0f}/s, {ms:.3f} ms CPU each, {total} samples ({out})")
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"  top {title}:")
        for f, n in sorted(table.items(), key=lambda x: -x[1])[:25]:
            print(f"    {100 * n / total:5.1f}%  {f}")


def machine(body: int) -> None:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; response body {body} bytes")


if __name__ == "__main__":
    main()

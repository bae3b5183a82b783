"""`havedane check` on its own: a resolver that does not answer is named once, and the
zone's signatures are read as served (a real Knot on loopback) and judged by when they
expire (RFC 4034 §3.1.5)."""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.zone
import pytest

from havedane import checksigs, zonekeys
from havedane.dns import sign, zone
from helpers import free_port, make_setup, require

DOMAIN = "x.test"
NOW = datetime.datetime.now(datetime.UTC)


def check(config: Path, resolver: str) -> tuple[int, str, float]:
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "havedane", "check", "--config", str(config), "--resolver", resolver,
                        "--smtp-port", str(free_port())], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout, time.monotonic() - start


def test_a_resolver_that_does_not_answer_is_named_once(tmp_path: Path) -> None:
    config = make_setup(tmp_path, DOMAIN)
    # A UDP port held open and never read: queries to it go unanswered (no ICMP refusal either).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = f"127.0.0.1:{silent.getsockname()[1]}"
        code, out, took = check(config, resolver)
    assert code == 1, out
    assert took < 10, (took, out)  # one query's timeout, not one per host
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert fails == [f"FAIL  resolver {resolver}: does not answer (Timeout: The DNS operation timed out.); "
                     "nothing else checked"], out  # fmt: skip
    assert "publish" not in out, out


@pytest.mark.parametrize(
    ("expires_in", "state"),
    [(datetime.timedelta(days=20), "ok"), (datetime.timedelta(days=6), "warn"), (datetime.timedelta(hours=-1), "fail"),
     (datetime.timedelta(days=7, seconds=-1), "warn")],
)  # fmt: skip
def test_the_first_expiration_decides(expires_in: datetime.timedelta, state: str) -> None:
    later = NOW + datetime.timedelta(days=30)
    assert checksigs.verdict([later, NOW + expires_in, later], NOW)[0] == state
    assert checksigs.verdict([], NOW)[0] == "fail"


def signed_at(tmp_path: Path, now: datetime.datetime) -> None:
    """The zone `havedane zone --sign` wrote, signed again with its own key as if at `now`."""
    path = tmp_path / f"{DOMAIN}.zone"
    z = dns.zone.from_file(str(path), origin=DOMAIN + ".", relativize=False)
    sign.sign(z, zonekeys.load_or_create(tmp_path / "dnssec", DOMAIN), now=now)
    path.write_text(zone.zone_text(z))


def soa_answered(port: int) -> bool:
    try:
        msg = dns.message.make_query(DOMAIN, "SOA", want_dnssec=True)
        return dns.query.udp(msg, "127.0.0.1", timeout=1, port=port).rcode() == dns.rcode.NOERROR
    except (dns.exception.DNSException, OSError):
        return False


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """knotd on the configuration `havedane zone --sign --knot-conf` wrote, on loopback, with
    signatures that expire in 5 days."""
    knotd = require("knotd")
    config = make_setup(tmp_path, DOMAIN)
    out = str(tmp_path / f"{DOMAIN}.zone")
    argv = ["zone", "--config", str(config), "--sign", "--address", "127.0.0.1", "--out", out,
            "--knot-conf", str(tmp_path / "knot.conf")]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "havedane", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    signed_at(tmp_path, NOW - sign.LIFETIME + datetime.timedelta(days=5))
    port = free_port()
    conf = (tmp_path / "knot.conf").read_text()
    conf = conf.replace("listen: 0.0.0.0@53", f'listen: 127.0.0.1@{port}\n    rundir: "{tmp_path}"')
    conf = conf.replace("template:\n  - id: default\n", f'template:\n  - id: default\n    storage: "{tmp_path}"\n')
    # Knot checks the signatures when it loads the zone: an expired one comes from a zone that
    # was valid when loaded and expired while served, which is what reloading it here stands for.
    conf = conf.replace("dnssec-validation: on", "dnssec-validation: off")
    (tmp_path / "knot.conf").write_text(conf + f'database:\n    storage: "{tmp_path}"\n')
    with (tmp_path / "knotd.log").open("wb") as log:
        proc = subprocess.Popen([knotd, "-c", str(tmp_path / "knot.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not soa_answered(port):
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "knotd.log").read_text()
            time.sleep(0.2)
        yield config, port
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_check_warns_of_signatures_about_to_expire_and_fails_on_expired_ones(knot: tuple[Path, int]) -> None:
    config, port = knot
    _, out, _ = check(config, f"127.0.0.1:{port}")
    expires = (NOW + datetime.timedelta(days=5)).strftime("%Y-%m-%d")
    line = [x for x in out.splitlines() if x.startswith(("ok    signatures", "WARN  signatures", "FAIL  signatures"))]
    assert len(line) == 1 and line[0].startswith(
        f"WARN  signatures {DOMAIN}: the first signature expires at {expires}"
    ), out
    assert "in 5.0 days" in line[0] and "fix: sign again (`havedane zone --sign`" in out, out

    # Signed 31 days ago: every signature expired a day ago, and Knot serves them all the same.
    signed_at(config.parent, NOW - datetime.timedelta(days=31))
    knotc = require("knotc")
    r = subprocess.run([knotc, "-c", str(config.parent / "knot.conf"), "zone-reload", DOMAIN],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.monotonic() + 15
    while True:
        code, out, _ = check(config, f"127.0.0.1:{port}")
        if "FAIL  signatures" in out or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 1
    assert f"FAIL  signatures {DOMAIN}: a signature expired at " in out, out
    assert "the zone is bogus to every validator" in out, out

"""The shipped deployment files are valid for the tools that read them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import dns.rdtypes.ANY.RRSIG
import dns.zone

from havedane import config as configmod
from havedane import pki
from helpers import make_setup, require

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    tool = require("systemd-analyze")
    havedane = shutil.which("havedane", path=str(ROOT / ".venv" / "bin")) or shutil.which("havedane")
    assert havedane, "havedane is installed in the venv"
    unit = (DEPLOY / "havedane.service").read_text()
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit and "User=havedane" in unit
    # Room for every SMTP connection and live page the defaults admit, and then some.
    (limit,) = [int(line.split("=")[1]) for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    config = configmod.load(None, env={}, default_domain="havedane.example")
    assert limit >= 2 * (config.max_connections + config.max_streams) + 1024
    # Verify the unit as shipped, with the one path that differs on this machine.
    (tmp_path / "havedane.service").write_text(unit.replace("/usr/local/bin/havedane", havedane))
    r = subprocess.run([tool, "verify", str(tmp_path / "havedane.service")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def resign_units() -> tuple[str, str]:
    return (DEPLOY / "havedane-resign.service").read_text(), (DEPLOY / "havedane-resign.timer").read_text()


def test_resign_units_verify_cleanly(tmp_path: Path) -> None:
    tool = require("systemd-analyze")
    require("knotc")  # the unit names /usr/sbin/knotc, where Debian's knot package puts it
    havedane = shutil.which("havedane", path=str(ROOT / ".venv" / "bin"))
    assert havedane, "havedane is installed in the venv"
    service, timer = resign_units()
    assert "User=havedane" in service and "Type=oneshot" in service
    assert "ExecStartPost=+/usr/sbin/knotc zone-reload\n" in service
    assert "OnCalendar=daily" in timer and "Persistent=true" in timer and "WantedBy=timers.target" in timer
    (tmp_path / "havedane-resign.service").write_text(service.replace("/usr/local/bin/havedane", havedane))
    (tmp_path / "havedane-resign.timer").write_text(timer)
    units = [str(tmp_path / "havedane-resign.service"), str(tmp_path / "havedane-resign.timer")]
    r = subprocess.run([tool, "verify", *units], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_the_resign_command_signs_the_zone_afresh(tmp_path: Path) -> None:
    """The unit's ExecStart, with its Environment, run as written on a setup (paths moved
    into tmp_path): the zone file it writes is signed for the next 30 days."""
    service, _ = resign_units()
    env = dict(
        pair.split("=", 1) for line in service.splitlines() if line.startswith("Environment=")
        for pair in line.removeprefix("Environment=").split()
    )  # fmt: skip
    (command,) = [line.removeprefix("ExecStart=") for line in service.splitlines() if line.startswith("ExecStart=")]
    zone_file = tmp_path / "knot" / Path(env["ZONE_FILE"]).name
    zone_file.parent.mkdir()
    make_setup(tmp_path / "state", Path(env["ZONE_FILE"]).stem)
    argv = [
        {"${ADDRESS}": env["ADDRESS"], "${ZONE_FILE}": str(zone_file)}.get(word, word)
        .replace("/var/lib/havedane", str(tmp_path / "state"))
        for word in command.split()
    ]  # fmt: skip
    assert argv[0] == "/usr/local/bin/havedane"
    r = subprocess.run([sys.executable, "-m", "havedane", *argv[1:]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    z = dns.zone.from_file(str(zone_file), origin=zone_file.stem + ".", relativize=False)
    sigs = [rd for _, _, rd in z.iterate_rdatas() if isinstance(rd, dns.rdtypes.ANY.RRSIG.RRSIG)]
    expirations = [rd.expiration for rd in sigs]
    days = (min(expirations) - time.time()) / 86400
    assert expirations and 29.9 < days <= 30, days


def test_systemd_verify_does_catch_a_broken_unit(tmp_path: Path) -> None:
    tool = require("systemd-analyze")
    (tmp_path / "broken.service").write_text("[Service]\nExecStart=/nonexistent/x\nRestart=whenever\n")
    r = subprocess.run([tool, "verify", str(tmp_path / "broken.service")], capture_output=True, text=True)
    assert r.returncode != 0 or r.stderr.strip()


def nginx_test(tmp_path: Path, site: str) -> subprocess.CompletedProcess[str]:
    tool = require("nginx")
    # Test certificates in place of the real ones the sample names.
    key = pki.new_key("ecdsa")
    cert = pki.make_ca("havedane.example", key)
    pki.write_key(tmp_path / "privkey.pem", key)
    (tmp_path / "fullchain.pem").write_bytes(pki.pem(cert))
    site = site.replace("/etc/letsencrypt/live/havedane.example", str(tmp_path))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; include {tmp_path}/site.conf; }}\n"
    )
    return subprocess.run([tool, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True)  # fmt: skip


def test_nginx_sample_is_valid(tmp_path: Path) -> None:
    site = (DEPLOY / "nginx-havedane.conf").read_text()
    assert "proxy_buffering off" in site and "X-Forwarded-For $remote_addr" in site
    # Connections per visitor address are capped in front of havedane, live pages more tightly.
    assert "limit_conn_zone $binary_remote_addr" in site and "limit_conn_status 429" in site
    events = site[site.index("location ~ ^/api/tests/") :]
    assert "limit_conn havedane_addr" in events
    r = nginx_test(tmp_path, site)
    assert r.returncode == 0, r.stderr
    assert "syntax is ok" in r.stderr


def test_nginx_test_does_catch_a_broken_config(tmp_path: Path) -> None:
    r = nginx_test(tmp_path, (DEPLOY / "nginx-havedane.conf").read_text().replace("proxy_pass", "proxy_passs", 1))
    assert r.returncode != 0

"""The command line, run as a user runs it: a real process, its exit code and output."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from havedane.cli import parser

COMMANDS = ["init", "serve", "records", "zone", "db"]


def havedane(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "havedane", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=60,
    )  # fmt: skip


def test_help_lists_every_command_with_help_text() -> None:
    out = havedane("--help").stdout
    for name in COMMANDS:
        assert name in out
    sub = next(a for a in parser()._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[attr-defined]
        assert p.description, f"{name} has no help text"


def test_version() -> None:
    assert havedane("--version").stdout.startswith("havedane ")


def test_init_writes_setup_and_refuses_to_overwrite(tmp_path: Path) -> None:
    r = havedane("init", "--domain", "x.test", "--dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    d = tmp_path / "d"
    assert (d / "havedane.toml").exists() and (d / "havedane.sqlite3").exists()
    for key in ("ca.key", "leaf-ecdsa.key", "leaf-rsa.key"):
        assert stat.S_IMODE((d / "tls" / key).stat().st_mode) == 0o600
    before = (d / "tls" / "ca.pem").read_bytes()
    r = havedane("init", "--domain", "x.test", "--dir", str(d))
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (d / "tls" / "ca.pem").read_bytes() == before
    r = havedane("init", "--domain", "x.test", "--dir", str(d), "--force")
    assert r.returncode == 0 and (d / "tls" / "ca.pem").read_bytes() != before


def test_certificates_cover_every_probe_host_and_chain_holds_the_ca(tmp_path: Path) -> None:
    from cryptography import x509

    havedane("init", "--domain", "x.test", "--dir", str(tmp_path))
    for kind in ("ecdsa", "rsa"):
        leaf, ca = x509.load_pem_x509_certificates((tmp_path / "tls" / f"chain-{kind}.pem").read_bytes())
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
        # Every test's host at a probe is one label below it: <alias>.do.x.test.
        assert {"*.do.x.test", "*.dont.x.test", "*.wrong.x.test", "*.ta.x.test"} <= set(names)
        assert leaf.issuer == ca.subject
        assert ca.not_valid_after_utc.year - ca.not_valid_before_utc.year >= 99


@pytest.mark.parametrize("domain", ["nodots", "bad domain.test", "-x-.test.."])
def test_init_rejects_bad_domain(tmp_path: Path, domain: str) -> None:
    r = havedane("init", "--domain", domain, "--dir", str(tmp_path))
    assert r.returncode == 2 and "--domain" in r.stderr and "Traceback" not in r.stderr


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    havedane("init", "--domain", "x.test", "--dir", str(tmp_path))
    cfg = tmp_path / "havedane.toml"
    cfg.write_text(cfg.read_text().replace("timeout = 300", 'timeout = "never"'))
    for cmd in (["serve"], ["records"]):
        r = havedane(*cmd, "--config", str(cfg))
        assert r.returncode == 2, r
        assert r.stderr.strip() == "havedane: config: smtp.timeout: must be a number, got 'never'"


def test_records_without_setup_is_one_line(tmp_path: Path) -> None:
    r = havedane("records", cwd=tmp_path, env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert r.returncode == 2 and "havedane init" in r.stderr and "Traceback" not in r.stderr


def test_serve_reports_a_busy_port(tmp_path: Path) -> None:
    import socket

    havedane("init", "--domain", "x.test", "--dir", str(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = havedane("serve", "--config", str(tmp_path / "havedane.toml"), "--smtp-listen", f"127.0.0.1:{port}")
    assert r.returncode == 1 and "cannot listen for SMTP" in r.stderr and "Traceback" not in r.stderr


def test_records_json_and_zone(tmp_path: Path) -> None:
    import json

    havedane("init", "--domain", "x.test", "--dir", str(tmp_path))
    cfg = str(tmp_path / "havedane.toml")
    recs = json.loads(havedane("records", "--config", cfg, "--format", "json", "--address", "192.0.2.7").stdout)
    by_name: dict[str, list[str]] = {}
    for r in recs:
        by_name.setdefault(f"{r['name']} {r['type']}", []).append(r["data"])
    # Once for every test: wildcards with the address and the TLSA RRset, and no MX.
    assert by_name["*.do.x.test. A"] == ["192.0.2.7"]
    assert not [name for name in by_name if name.endswith(" MX")]
    assert sorted(d[:5] for d in by_name["*.do.x.test. TLSA"]) == ["2 1 1", "3 1 1", "3 1 1"]
    assert sorted(d[:5] for d in by_name["*.wrong.x.test. TLSA"]) == ["2 1 1", "3 1 1", "3 1 1"]
    assert by_name["*.dont.x.test. A"] == ["192.0.2.7"] and "*.dont.x.test. TLSA" not in by_name
    assert not set(by_name["*.do.x.test. TLSA"]) & set(by_name["*.wrong.x.test. TLSA"])
    r = havedane("records", "--config", cfg, "--address", "not-an-ip")
    assert r.returncode == 2 and "--address" in r.stderr


def test_force_keeps_the_database(tmp_path: Path) -> None:
    from test_postfix import deliver, new_alias, stored

    cfg = tmp_path / "havedane.toml"
    assert havedane("init", "--domain", "x.test", "--dir", str(tmp_path)).returncode == 0
    alias = new_alias(cfg)
    assert deliver(cfg, f"test@{alias}.do.x.test", b"Subject: x\r\n\r\nx\r\n").returncode == 0
    r = havedane("init", "--domain", "x.test", "--dir", str(tmp_path), "--force")
    assert r.returncode == 0, r.stderr
    assert [row[0] for row in stored(cfg, alias)] == ["do"]


def test_add_missing_keeps_the_ca_and_everything_present(tmp_path: Path) -> None:
    from cryptography import x509

    d = tmp_path / "d"
    assert havedane("init", "--domain", "x.test", "--dir", str(d)).returncode == 0
    tls = d / "tls"
    before = {p.name: p.read_bytes() for p in [*tls.iterdir(), d / "havedane.toml", d / "havedane.sqlite3"]}
    gone = sorted(p.name for p in tls.glob("*rogue*")) + ["leaf-rsa.key"]
    assert len(gone) >= 4
    for name in gone:
        (tls / name).unlink()
    r = havedane("serve", "--config", str(d / "havedane.toml"))
    assert r.returncode == 2 and "havedane init --add-missing" in r.stderr and "--force" not in r.stderr, r.stderr
    r = havedane("init", "--add-missing", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    after = {p.name: p.read_bytes() for p in [*tls.iterdir(), d / "havedane.toml", d / "havedane.sqlite3"]}
    assert set(after) == set(before)
    # what was there is untouched (the CA the published TLSA name, the config, the database) ...
    for name in set(before) - {"leaf-rsa.key", "leaf-rsa.pem", "chain-rsa.pem"} - set(gone):
        assert after[name] == before[name], name
    # ... and what was missing is made anew, issued by that CA
    ca = x509.load_pem_x509_certificate(before["ca.pem"])
    for chain in ("chain-rogue.pem", "chain-rsa.pem"):
        certs = x509.load_pem_x509_certificates(after[chain])
        assert certs[-1] == ca, chain
    assert stat.S_IMODE((tls / "leaf-rsa.key").stat().st_mode) == 0o600


def test_add_missing_without_a_setup_is_one_line(tmp_path: Path) -> None:
    r = havedane("init", "--add-missing", "--dir", str(tmp_path))
    assert r.returncode == 2 and "havedane init --domain" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

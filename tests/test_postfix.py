"""The Postfix bridge: `havedane deliver` as pipe(8) runs it, and the Received header parser."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from havedane import cli, postfix

RECEIVED = (
    "from mail.sender.example (mail.sender.example [192.0.2.44])\r\n"
    "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n"
    "\t key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256)\r\n"
    "\t(No client certificate requested)\r\n"
    "\tby mx.x.test (Postfix) with ESMTPS id 4ABC; Tue, 24 Nov 2026 23:00:00 +0000 (UTC)"
)


def deliver(config: Path, rcpt: str, message: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "havedane", "deliver", "--config", str(config), "--sender", "a@sender.example",
         "--recipient", rcpt, *extra],
        input=message, capture_output=True, timeout=60, env=os.environ,
    )  # fmt: skip


def new_alias(config: Path) -> str:
    import asyncio
    import time

    from havedane import config as configmod
    from havedane.model import Test
    from havedane.store import open_store

    alias = "bridgetest" + os.urandom(4).hex()

    async def create() -> None:
        store = open_store(configmod.load(config, env={}).store_url)
        await store.open()
        await store.create_test(Test(alias, time.time(), "127.0.0.1"))
        await store.close()

    asyncio.run(create())
    return alias


def stored(config: Path, alias: str) -> list[tuple[str, ...]]:
    db = sqlite3.connect(config.parent / "havedane.sqlite3")
    return db.execute(
        "SELECT probe, client_ip, helo, mail_from, tls_version, tls_cipher, message_id FROM deliveries WHERE alias = ?",
        (alias,),
    ).fetchall()


def test_parse_received_with_tls() -> None:
    r = postfix.parse_received(RECEIVED)
    assert r.client_ip == "192.0.2.44"
    assert r.helo == "mail.sender.example"
    assert r.tls is not None and (r.tls.version, r.tls.cipher) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")


def test_parse_received_plaintext_and_ipv6() -> None:
    r = postfix.parse_received("from [IPv6:2001:db8::1] (unknown [IPv6:2001:db8::1]) by mx.x.test (Postfix) with ESMTP")
    assert r.client_ip == "2001:db8::1" and r.tls is None


@pytest.mark.parametrize("garbage", ["", "(((", "from", "from x (y [not-an-ip]) (using TLSv9 with cipher)", "\udcff"])
def test_parse_received_never_raises(garbage: str) -> None:
    assert postfix.parse_received(garbage).tls is None


def test_deliver_records_8bit_and_broken_headers(setup_dir: Path) -> None:
    alias = new_alias(setup_dir)
    message = (
        b"Received: " + RECEIVED.encode() + b"\r\n"
        b"Subject: \xe4\xf6\xfc caf\xc3\xa9 =?utf-8?q?broken\r\n"
        b"From: \xff\xfe <nobody@\xc0\xc1>\r\n"
        b"X-Broken header without colon\r\n"
        b"Message-ID: <8bit@sender.example>\r\n"
        b"\r\n"
        b"body \xff\xfe\x00 binary\r\n"
    )
    rcpt = f"test@{alias}.do.x.test"
    r = deliver(setup_dir, rcpt, message, "--client-address", "192.0.2.44", "--client-helo", "helo.x")
    assert r.returncode == 0, r.stderr
    assert b"Traceback" not in r.stderr
    rows = stored(setup_dir, alias)
    assert rows == [("do", "192.0.2.44", "helo.x", "a@sender.example", "TLSv1.3", "TLS_AES_256_GCM_SHA384",
                     "<8bit@sender.example>")]  # fmt: skip
    # the body is not stored anywhere
    assert b"binary" not in (setup_dir.parent / "havedane.sqlite3").read_bytes()


def test_deliver_takes_the_client_from_received_when_postfix_says_unknown(setup_dir: Path) -> None:
    alias = new_alias(setup_dir)
    msg = b"Received: " + RECEIVED.encode() + b"\r\n\r\nx\r\n"
    r = deliver(setup_dir, f"test@{alias}.wrong.x.test", msg, "--client-address", "unknown")
    assert r.returncode == 0, r.stderr
    assert stored(setup_dir, alias)[0][:3] == ("wrong", "192.0.2.44", "mail.sender.example")


def test_deliver_unknown_alias_is_ex_nouser(setup_dir: Path) -> None:
    r = deliver(setup_dir, "test@nosuchtest123.do.x.test", b"Subject: x\r\n\r\nx\r\n")
    assert r.returncode == postfix.EX_NOUSER == 67
    assert b"no such test" in r.stderr and b"Traceback" not in r.stderr
    r = deliver(setup_dir, "someone@elsewhere.example", b"x")
    assert r.returncode == 67
    # The test is named by the host now: the old form (alias in the local part) names none.
    alias = new_alias(setup_dir)
    r = deliver(setup_dir, f"{alias}@do.x.test", b"x")
    assert r.returncode == 67 and b"not a probe domain" in r.stderr


def test_deliver_with_a_locked_database_is_ex_tempfail(setup_dir: Path) -> None:
    alias = new_alias(setup_dir)
    cfg = setup_dir.read_text()
    db = sqlite3.connect(setup_dir.parent / "havedane.sqlite3", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        env = {**os.environ, "HAVEDANE_STORE_BUSY_TIMEOUT": "0.3"}
        r = subprocess.run(
            [sys.executable, "-m", "havedane", "deliver", "--config", str(setup_dir), "--sender", "a@b.example",
             "--recipient", f"test@{alias}.do.x.test"],
            input=b"x", capture_output=True, timeout=60, env=env,
        )  # fmt: skip
    finally:
        db.execute("ROLLBACK")
    assert r.returncode == postfix.EX_TEMPFAIL == 75, r.stderr
    assert setup_dir.read_text() == cfg


def test_deliver_bad_config_is_ex_config(tmp_path: Path) -> None:
    (tmp_path / "havedane.toml").write_text("domain = 1\n")
    r = deliver(tmp_path / "havedane.toml", "a@do.x.test", b"x")
    assert r.returncode == postfix.EX_CONFIG


def test_postfix_config_snippets(setup_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "havedane", "postfix-config", "--config", str(setup_dir), "--havedane", "/usr/bin/hd"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "smtpd_tls_received_header = yes" in out
    assert "argv=/usr/bin/hd deliver --config" in out
    # Every test's host below each probe: `.<probe>.<domain>` in relay_domains and the transport map.
    relay = next(line for line in out.splitlines() if line.startswith("relay_domains ="))
    assert relay == "relay_domains = $mydestination, .do.x.test, .dont.x.test, .wrong.x.test"
    for probe in ("do", "dont", "wrong"):
        assert f"\n.{probe}.x.test " in out
    assert json.dumps(out)  # printable


def test_postfix_config_paths_are_absolute(setup_dir: Path) -> None:
    """Postfix reads the key and chain files from its own working directory, not the one
    `postfix-config` ran in: every path it prints must be absolute, even for `--config havedane.toml`."""
    out = subprocess.run(
        [sys.executable, "-m", "havedane", "postfix-config", "--config", setup_dir.name],
        capture_output=True, text=True, check=True, cwd=setup_dir.parent,
    ).stdout  # fmt: skip
    chain = out.split("smtpd_tls_chain_files =", 1)[1].split("smtpd_tls_security_level", 1)[0]
    files = [f.strip() for f in chain.replace("\n", ",").split(",") if f.strip()]
    tls = (setup_dir.parent / "tls").resolve()
    assert files == [
        f"{tls}/leaf-ecdsa.key", f"{tls}/chain-ecdsa.pem", f"{tls}/leaf-rsa.key", f"{tls}/chain-rsa.pem"
    ]  # fmt: skip
    for f in files:
        assert Path(f).is_file(), f
    assert f"--config {setup_dir.resolve()}" in out


def test_cli_lists_bridge_commands() -> None:
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    assert {"deliver", "postfix-config", "check"} <= set(sub.choices)  # type: ignore[arg-type]


def test_deliver_records_8bit_envelope_cleaned(setup_dir: Path) -> None:
    # Postfix passes the sender and HELO as the client sent them: bytes that may not be UTF-8.
    alias = new_alias(setup_dir)
    r = subprocess.run(
        [sys.executable.encode(), b"-m", b"havedane", b"deliver", b"--config", str(setup_dir).encode(),
         b"--sender", b"\xe9t\xe9@sender.example", b"--recipient", f"test@{alias}.do.x.test".encode(),
         b"--client-address", b"192.0.2.44", b"--client-helo", b"h\xc3\xa9lo.example\xff"],
        input=b"Subject: x\r\n\r\nx\r\n", capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert b"Traceback" not in r.stderr
    row = stored(setup_dir, alias)[0]
    assert row[2:4] == ("h\u00e9lo.example\ufffd", "\ufffdt\ufffd@sender.example")


def test_deliver_unexpected_error_is_ex_tempfail(setup_dir: Path) -> None:
    # A failure nobody foresaw (here: the database aborts the insert) must make Postfix
    # retry (75), never bounce the sender's mail (pipe(8) bounces on 1).
    alias = new_alias(setup_dir)
    db = sqlite3.connect(setup_dir.parent / "havedane.sqlite3")
    db.execute("CREATE TRIGGER boom BEFORE INSERT ON deliveries BEGIN SELECT RAISE(ABORT, 'boom'); END")
    db.commit()
    db.close()
    r = deliver(setup_dir, f"test@{alias}.do.x.test", b"Subject: x\r\n\r\nx\r\n")
    assert r.returncode == postfix.EX_TEMPFAIL == 75, r.stderr
    assert b"Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert b"boom" in r.stderr

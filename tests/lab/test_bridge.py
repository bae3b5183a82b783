"""The Postfix bridge in the lab: Postfix owns port 25 with the configuration
`havedane postfix-config` prints and hands each recipient to `havedane deliver`;
a DANE-validating Postfix sends to it through the validating resolver. The verdict
is `validates`, and the deliveries carry the TLS version and cipher that
`havedane deliver` read from Postfix's Received header."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import havedane
from havedane import config as configmod
from havedane import pki, zonekeys
from havedane.dns import zone

from . import world
from .netns import stop, wait_until
from .postfix import MASTER, Postfix

pytestmark = pytest.mark.lab

BRIDGE = "127.0.0.40"  # Postfix as the receiving MTA
SENDER = "127.0.0.32"  # a DANE-validating Postfix that asks the variant's resolver
WEB = ("127.0.0.1", 8081)  # `havedane serve --role web` over the bridge's database
PIPE_USER = "nobody"  # pipe(8) never runs a command as root


def unprivileged_havedane(directory: Path) -> Path:
    """`havedane` as a user other than root runs it. The interpreter of this test run
    may live where only root can reach (pyenv under /root), so the command runs
    Debian's python3 (the same 3.11) over this run's packages, like a system install."""
    system_python = shutil.which("python3", path="/usr/bin")
    if system_python is None:
        pytest.fail("the bridge test needs /usr/bin/python3 (Debian's python3 package)")
    packages = sysconfig.get_paths()["purelib"]
    source = Path(havedane.__file__).resolve().parents[1]
    directory.mkdir(parents=True, exist_ok=True)
    command = directory / "havedane"
    command.write_text(f'#!/bin/sh\nPYTHONPATH="{packages}:{source}" exec {system_python} -m havedane "$@"\n')
    command.chmod(0o755)
    return command


def snippet_parts(text: str) -> dict[str, str]:
    """The three parts of `havedane postfix-config`, by the file they go into."""
    parts: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("# --- "):
            current = line.split()[2]
            parts[current] = []
        elif current:
            parts[current].append(line)
    return {k: "\n".join(v) + "\n" for k, v in parts.items()}


class BridgePostfix(Postfix):
    """The receiving MTA: the lab's Postfix settings plus the generated bridge snippets."""

    def __init__(self, lab: world.World, directory: Path, bridge_config: Path, command: Path) -> None:
        super().__init__(lab.ns, directory, "bridge", BRIDGE, lab.zone, dane=False)
        self.bridge_config, self.havedane = bridge_config, command

    def write_config(self) -> None:
        super().write_config()
        out = subprocess.run(
            [sys.executable, "-m", "havedane", "postfix-config", "--config", str(self.bridge_config),
             "--havedane", str(self.havedane), "--user", PIPE_USER],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        parts = snippet_parts(out)
        transport = self.dir / "havedane_transport"
        main = parts["main.cf"].replace("/etc/postfix/havedane_transport", str(transport))
        with open(self.dir / "main.cf", "a") as f:
            f.write(f"myhostname = mx.{self.zone}\nsmtpd_tls_loglevel = 1\n{main}")
        with open(self.dir / "master.cf", "a") as f:
            f.write(parts["master.cf"])
        transport.write_text(parts["/etc/postfix/havedane_transport"])
        subprocess.run(["postmap", "-c", str(self.dir), f"hash:{transport}"], check=True, timeout=20)
        past = time.time() - 10  # Postfix waits until its config files are over a second old
        for name in ("main.cf", "master.cf"):
            os.utime(self.dir / name, (past, past))


class ResolvingPostfix(Postfix):
    """A DANE-validating sender whose processes see `resolv_conf` as /etc/resolv.conf
    (a private mount namespace, as `ip netns exec` does for the lab's own)."""

    def __init__(self, lab: world.World, directory: Path, resolv_conf: Path) -> None:
        super().__init__(lab.ns, directory, "dane2", SENDER, lab.zone, dane=True)
        self.resolv_conf = resolv_conf

    @contextlib.contextmanager
    def running(self) -> Iterator[Postfix]:
        self.write_config()
        self.command("postfix", "-c", str(self.dir), "check")
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(self.resolv_conf),
                MASTER, "-c", str(self.dir), "-s"]  # fmt: skip
        proc = self.ns.popen(argv, self.dir / "master.log")
        try:
            wait_until(lambda: self._accepts(proc), 15, f"postfix {self.name} listening on {self.address}:25")
            yield self
        finally:
            stop(proc, timeout=10)


@contextlib.contextmanager
def bridge_web(lab: world.World, command: Path, config: Path, log: Path) -> Iterator[None]:
    """The web app over the bridge's database, run as the pipe's user so that the
    SQLite files it creates stay writable for `havedane deliver`."""
    argv = ["runuser", "-u", PIPE_USER, "--", str(command), "serve", "--config", str(config),
            "--role", "web", "--web-listen", f"{WEB[0]}:{WEB[1]}"]  # fmt: skip
    proc = lab.ns.popen(argv, log, env={"HAVEDANE_VERDICT_GRACE": world.GRACE})

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"bridge web exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        return lab.ns.call(lambda: world._listening(*WEB))

    try:
        wait_until(up, 20, "the bridge's web app")
        yield
    finally:
        stop(proc, timeout=10)


def api(lab: world.World, method: str, path: str) -> httpx.Response:
    def request() -> httpx.Response:
        with httpx.Client(base_url=f"http://{WEB[0]}:{WEB[1]}", trust_env=False, timeout=10) as client:
            return client.request(method, path)

    return lab.ns.call(request)


def test_postfix_bridge_validates_with_tls_from_received(lab: world.World) -> None:
    if shutil.which("runuser") is None or shutil.which("postmap") is None:
        pytest.fail("the bridge test needs runuser and postmap (util-linux, postfix)")
    base = lab.dir / "bridge"
    setup = base / "havedane"
    world.havedane("init", "--domain", lab.zone, "--dir", str(setup))
    shutil.chown(setup, PIPE_USER)
    for path in setup.rglob("*"):
        shutil.chown(path, PIPE_USER)
    bridge_config = setup / "havedane.toml"
    command = unprivileged_havedane(base / "bin")

    # DNS: the probe hosts now lead to the bridge, with TLSA for the certificates
    # Postfix serves there, signed with the lab's key (the trust anchor holds).
    lab_cfg = configmod.load(lab.config, env={})
    cfg = configmod.load(bridge_config, env={})
    keys = zonekeys.load_all(lab_cfg.data_dir / "dnssec", zone.signed_zones(cfg.domain, cfg.probes))
    out = zone.build_zone(cfg.domain, cfg.probes, [c.leaf for c in pki.load_chains(cfg.tls_dir)],
                          pki.load_ca(cfg.tls_dir), [BRIDGE], keys=keys)  # fmt: skip

    with contextlib.ExitStack() as stack:
        resolv = stack.enter_context(world.alternate_dns(lab, "bridge", out.text, validation=True))
        stack.enter_context(bridge_web(lab, command, bridge_config, base / "web.log"))
        bridge = stack.enter_context(BridgePostfix(lab, base / "postfix-bridge", bridge_config, command).running())
        sender = stack.enter_context(ResolvingPostfix(lab, base / "postfix-dane2", resolv).running())

        r = api(lab, "POST", "/api/tests")
        assert r.status_code == 201, r.text
        test: dict[str, Any] = r.json()
        rcpts = [test["addresses"][p] for p in ("do", "dont", "wrong")]
        sent = sender.send(f"postmaster@dane2.{lab.zone}", rcpts, "havedane lab: bridge")
        try:
            outcomes = sender.wait_outcomes(sent, 3)
        finally:
            sender.delete_deferred()

        def settled() -> dict[str, Any] | None:
            body: dict[str, Any] = api(lab, "GET", f"/api/tests/{test['alias']}").json()
            return body if body["verdict"]["code"] != "pending" else None

        state = wait_until(settled, 30, "a verdict through the bridge", interval=0.25)
        bridge_log = bridge.log()

    assert outcomes[rcpts[0]].status == "sent" and outcomes[rcpts[1]].status == "sent", outcomes
    assert outcomes[rcpts[2]].status == "deferred" and outcomes[rcpts[2]].dsn == "4.7.5", outcomes
    assert state["verdict"]["code"] == "validates", state["verdict"]
    for name in ("do", "dont"):
        [d] = state["probes"][name]["deliveries"]
        assert d["client_ip"] == SENDER
        # Parsed by `havedane deliver` from "(using TLSv1.3 with cipher ...)" in Received.
        assert d["tls"] is not None and d["tls"]["version"].startswith("TLSv"), d
        assert d["tls"]["cipher"], d
    assert state["probes"]["wrong"]["deliveries"] == []
    # Postfix handed the mail to the pipe, which recorded it (exit 0 = "delivered via havedane").
    assert "relay=havedane" in bridge_log and "status=sent (delivered via havedane service" in bridge_log, bridge_log

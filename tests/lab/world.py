"""The whole lab, brought up in order and torn down in reverse, whatever happens.

    127.0.0.25:53  Knot, as an operator runs it: on the configuration
                `havedane zone --sign --knot-conf` wrote, serving the zone and the
                child zones (bogus, unsigned) it wrote, as written, at the address
                the zone's NS (ns.<zone>, `--address`) names: a one-host deployment
    127.0.0.21  Unbound: validates, trusting only the DS `havedane zone --sign` printed
    127.0.0.22/23  a second Knot + Unbound, for one test at a time, serving a variant
                of the zone under the same trust anchor (alternate_dns)
    127.0.0.25  `havedane serve`: the receiver on port 25 (web app on 127.0.0.1:8080),
                every probe that offers STARTTLS (the conformance matrix is on)
    127.0.0.27-29  its listeners without STARTTLS, for ta-notls, notls and unusable-notls
    127.0.0.30  Postfix that validates DANE (dnssec + dane)
    127.0.0.31  Postfix that does not (enabled + may)

All in a network namespace of its own: nothing reaches or comes from the host's network.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import dnsservers
from .netns import Netns, stop, wait_until
from .postfix import Postfix

ZONE = "havedane.test"  # RFC 6761 §6.2: .test never leaves a lab
RESOLVER = "127.0.0.21"
ALT_AUTHORITATIVE = "127.0.0.22"  # a variant of the zone, for one test at a time
ALT_RESOLVER = "127.0.0.23"
RECEIVER = "127.0.0.25"
# The zone's name server ns.<zone> has the receiver's address (`--address`, as on a
# one-host deployment): Knot serves the zone and its child zones there, on port 53.
AUTHORITATIVE = RECEIVER
PROBE_ADDRESSES = {
    "notls": "127.0.0.28",
    "unusable-notls": "127.0.0.29",
    "ta-notls": "127.0.0.27",
}  # [probes] addresses
DANE_SENDER = "127.0.0.30"
PLAIN_SENDER = "127.0.0.31"
WEB = ("127.0.0.1", 8080)
GRACE = "5"  # seconds; the verdict's default of 60 would dominate the lab's run time


@dataclass
class World:
    ns: Netns
    dir: Path
    zone: str
    zone_text: str
    ds: list[str]
    config: Path
    dane: Postfix
    plain: Postfix
    receiver_log: Path
    children: dict[str, str] = field(default_factory=dict)  # child zone name -> its text, as written
    probe_addresses: dict[str, str] = field(default_factory=dict)  # probe -> listener address of its own

    def api(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """A request to the web app, made from inside the namespace."""

        def request() -> httpx.Response:
            with httpx.Client(base_url=f"http://{WEB[0]}:{WEB[1]}", trust_env=False, timeout=10) as client:
                return client.request(method, path, json=json)

        return self.ns.call(request)

    def query(self, name: str, rdtype: str, checking_disabled: bool = False) -> dnsservers.Answer:
        return dnsservers.query(self.ns, RESOLVER, name, rdtype, checking_disabled)


def fresh_host(probe: str, zone: str = ZONE) -> str:
    """A test's host at `probe` that nobody asked for yet (as a new test's is): answered
    by the wildcard `*.<probe>.<zone>`."""
    return f"t{secrets.token_hex(6)}.{probe}.{zone}"


def havedane(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "havedane", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lab: havedane {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


@dataclass(frozen=True)
class Deployment:
    config: Path
    zone_text: str
    ds: list[str]
    children: dict[str, str]  # child zone name -> its text
    knot_conf: str  # the Knot configuration it wrote, serving all of them


def deploy(directory: Path) -> Deployment:
    """`havedane init`, the conformance matrix switched on in its config, then
    `havedane zone --sign --knot-conf`: the signed zone, the DS, the child zones it
    wrote, and the Knot configuration that serves them."""
    havedane("init", "--domain", ZONE, "--dir", str(directory))
    config = directory / "havedane.toml"
    enable_matrix(config)
    zone_file, knot_conf = directory / f"{ZONE}.zone", directory / "knot.conf"
    proc = havedane("zone", "--config", str(config), "--sign", "--address", RECEIVER, "--out", str(zone_file),
                    "--knot-conf", str(knot_conf))  # fmt: skip
    ds = [line for line in proc.stderr.splitlines() if " DS " in line]
    assert ds, f"havedane zone --sign printed no DS: {proc.stderr!r}"
    written = re.findall(r"^havedane: child zone (\S+) written to (.+)$", proc.stderr, re.M)
    children = {name: Path(path).read_text() for name, path in written}
    assert set(children) == {f"bogus.{ZONE}", f"unsigned.{ZONE}", f"mxdenial.{ZONE}"}, proc.stderr
    return Deployment(config, zone_file.read_text(), ds, children, knot_conf.read_text())


def make_zone(directory: Path) -> tuple[Path, str, list[str]]:
    """`havedane init` then `havedane zone --sign`: the config, the signed zone, the DS."""
    d = deploy(directory)
    return d.config, d.zone_text, d.ds


def enable_matrix(config: Path) -> None:
    """What an operator edits in the havedane.toml `havedane init` wrote: `matrix = true`
    and the no-STARTTLS probes' own addresses."""
    text = config.read_text()
    addresses = ", ".join(f'"{name}" = "{ip}"' for name, ip in PROBE_ADDRESSES.items())
    edited = text.replace("\nmatrix = false\n", f"\nmatrix = true\naddresses = {{ {addresses} }}\n", 1)
    assert edited != text, f"lab: no `matrix = false` in {config}"
    config.write_text(edited)


@contextlib.contextmanager
def receiver(ns: Netns, config: Path, log: Path) -> Iterator[None]:
    argv = [
        sys.executable, "-m", "havedane", "serve", "--config", str(config),
        "--smtp-listen", f"{RECEIVER}:25", "--web-listen", f"{WEB[0]}:{WEB[1]}",
    ]  # fmt: skip
    proc = ns.popen(argv, log, env={"HAVEDANE_VERDICT_GRACE": GRACE})

    listeners = [(RECEIVER, 25), WEB, *((ip, 25) for ip in PROBE_ADDRESSES.values())]

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"lab: havedane serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        return ns.call(lambda: all(_listening(host, port) for host, port in listeners))

    try:
        wait_until(up, 20, "havedane serve listening")
        yield
    finally:
        stop(proc, timeout=10)


def _resolves(ns: Netns, name: str) -> bool:
    return dnsservers.query(ns, RESOLVER, name, "SOA").rcode == "NOERROR"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def build(directory: Path) -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        ns = Netns()
        stack.callback(ns.delete)  # registered first: runs last, after every process is gone
        ns.create(RESOLVER)
        d = deploy(directory / "havedane")
        zones = [ZONE, *d.children]
        stack.enter_context(dnsservers.knot_as_written(ns, directory / "knot", d.knot_conf, AUTHORITATIVE, zones))
        stack.enter_context(
            dnsservers.unbound(ns, directory / "unbound", RESOLVER, ZONE, d.ds, AUTHORITATIVE, f"lab.do.{ZONE}")
        )
        # The children are reached only through the parent's delegation (NS ns.<zone>).
        wait_until(lambda: all(_resolves(ns, name) for name in d.children), 10, "unbound resolving the child zones")
        receiver_log = directory / "havedane-serve.log"
        stack.enter_context(receiver(ns, d.config, receiver_log))
        dane = stack.enter_context(Postfix(ns, directory / "postfix-dane", "dane", DANE_SENDER, ZONE, True).running())
        plain = stack.enter_context(
            Postfix(ns, directory / "postfix-plain", "plain", PLAIN_SENDER, ZONE, False).running()
        )
        yield World(
            ns, directory, ZONE, d.zone_text, d.ds, d.config, dane, plain, receiver_log,
            children=d.children, probe_addresses=dict(PROBE_ADDRESSES),
        )  # fmt: skip


@contextlib.contextmanager
def alternate_dns(
    world: World,
    tag: str,
    zone_text: str,
    validation: bool,
    children: tuple[dnsservers.ServedZone, ...] = (),
    ready: list[str] | None = None,
    dnstap: bool = False,
) -> Iterator[Path]:
    """A second Knot + Unbound pair in the lab (127.0.0.22/23) serving a variant of the
    zone under the same trust anchor (and `children`, reached there only when the
    variant's ns.<zone> has that address); yields a resolv.conf that points at it.
    With `dnstap`, Knot writes the queries it gets to dns-<tag>/knot/DNSTAP_FILE."""
    base = world.dir / f"dns-{tag}"
    with contextlib.ExitStack() as stack:
        zones = [dnsservers.ServedZone(world.zone, zone_text, validation), *children]
        stack.enter_context(dnsservers.knot_zones(world.ns, base / "knot", ALT_AUTHORITATIVE, zones, ready, dnstap))
        stack.enter_context(
            dnsservers.unbound(
                world.ns, base / "unbound", ALT_RESOLVER, world.zone, world.ds, ALT_AUTHORITATIVE, world.zone
            )
        )
        resolv = base / "resolv.conf"
        resolv.write_text(f"nameserver {ALT_RESOLVER}\noptions trust-ad\n")
        yield resolv

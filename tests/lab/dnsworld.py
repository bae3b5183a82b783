"""A lab for the diagnosis from DNS: two name servers, each with its own dnstap reader,
two resolvers (one validates, one does not) and three Postfix senders.

    127.0.0.25:53  Knot A, on the configuration `havedane zone --sign --knot-conf` wrote
                (the zone's NS, ns.<zone>, has this address), mod-dnstap to socket A
    127.0.0.26:53  Knot B, the same configuration and zone file, mod-dnstap to socket B
    socket A, B    `havedane serve --role dns` each, both writing to the one SQLite store
    127.0.0.21  Unbound that validates (trust anchor: the DS `havedane zone --sign` printed)
    127.0.0.22  Unbound that does not (no trust anchor, module-config "iterator")
                Both have a stub zone listing both Knots, so they ask both (RFC 1034
                §5.3.3: a resolver picks among the zone's servers).
    127.0.0.25:25  `havedane serve --role smtp`, and `--role web` on 127.0.0.1:8080: as in
                docs/scaling.md, every process on the same configuration (dnstap_socket
                set), and neither reads dnstap itself: the evidence comes from the store
    127.0.0.30  Postfix, smtp_tls_security_level = dane, through the validating resolver
    127.0.0.31  Postfix, smtp_tls_security_level = may, through the validating resolver
    127.0.0.32  Postfix, dane, through the non-validating resolver (its own resolv.conf,
                bind-mounted in a mount namespace of its own)

All in a network namespace of its own, built once for the module that uses it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from . import dnsservers
from .netns import Netns, stop, wait_until
from .postfix import Postfix
from .world import havedane

ZONE = "havedane.test"  # RFC 6761 §6.2
KNOTS = ("127.0.0.25", "127.0.0.26")  # the first is ns.<zone>, as `--address` wrote it
RECEIVER = KNOTS[0]  # a one-host deployment: the receiver at the name server's address
VALIDATING = "127.0.0.21"
NON_VALIDATING = "127.0.0.22"
SENDERS = {"dane": "127.0.0.30", "may": "127.0.0.31", "dane-nonvalidating": "127.0.0.32"}
WEB = ("127.0.0.1", 8080)
GRACE = "4"  # seconds; the verdict's default of 60 would dominate the run time

T = TypeVar("T")


@dataclass
class DnsWorld:
    ns: Netns
    dir: Path
    config: Path
    store: Path  # the SQLite file every `havedane serve` of the lab writes to
    senders: dict[str, Postfix]
    readers: dict[str, Path]  # name server address -> its reader's log
    resolvers_ready: float  # time.monotonic() when the resolvers last resolved in the zone

    def api(self, method: str, path: str) -> httpx.Response:
        def request() -> httpx.Response:
            with httpx.Client(base_url=f"http://{WEB[0]}:{WEB[1]}", trust_env=False, timeout=10) as client:
                return client.request(method, path)

        return self.ns.call(request)


class PrivateResolver(Netns):
    """The lab's namespace, but every command in it sees `resolv_conf` as /etc/resolv.conf:
    a mount namespace of its own with that file bind-mounted, as `ip netns exec` does for
    the namespace's. unshare and sh exec, so a started process's PID is still the server's."""

    def __init__(self, ns: Netns, resolv_conf: Path) -> None:
        self.name, self.etc, self._thread = ns.name, ns.etc, None
        self.lab, self.resolv_conf = ns, resolv_conf

    def argv(self, argv: Sequence[str]) -> list[str]:
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        private = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(self.resolv_conf)]
        return super().argv([*private, *argv])

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        return self.lab.call(fn, timeout)  # sockets only: the lab's own thread will do


def unbound_conf(directory: Path, address: str, validating: bool) -> str:
    """The lab's Unbound configuration (dnsservers.UNBOUND_CONF) with a stub address per
    Knot; without validation: no trust anchor, and the iterator alone."""
    text = dnsservers.UNBOUND_CONF.format(dir=directory, address=address, zone=ZONE, authoritative=KNOTS[0])
    edits = [(f"    stub-addr: {KNOTS[0]}\n", "".join(f"    stub-addr: {k}\n" for k in KNOTS))]
    if not validating:
        edits += [
            ('    module-config: "validator iterator"\n', '    module-config: "iterator"\n'),
            (f'    trust-anchor-file: "{directory}/anchor.ds"\n', ""),
        ]
    for old, new in edits:
        assert text.count(old) == 1, f"lab: dnsservers.UNBOUND_CONF no longer has {old!r}"
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def unbound(ns: Netns, directory: Path, address: str, ds: list[str], validating: bool) -> Iterator[None]:
    """Ready when it answers the zone's apex A: with AD if it validates, without if not."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "anchor.ds").write_text("\n".join(ds) + "\n")
    conf = directory / "unbound.conf"
    conf.write_text(unbound_conf(directory, address, validating))
    log = directory / "unbound.log"
    proc = ns.popen(["unbound", "-d", "-c", str(conf)], log)

    def ready() -> bool:
        dnsservers._alive(proc, log)
        try:
            a = dnsservers.query(ns, address, ZONE, "A", timeout=1, tcp=True)
        except Exception:  # noqa: BLE001 - not listening yet
            return False
        return a.rcode == "NOERROR" and bool(a.rrsets) and a.ad is validating

    try:
        dnsservers._wait(ready, f"unbound at {address} ({'' if validating else 'not '}validating)", log)
        yield
    finally:
        stop(proc)


def serve(ns: Netns, config: Path, log: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "havedane", "serve", "--config", str(config), *args]
    return ns.popen(argv, log, env=env)


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes], log: Path, up: Callable[[], bool], what: str) -> Iterator[None]:
    def check() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"lab: {what} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        return bool(up())

    try:
        wait_until(check, 20, what)
        yield
    finally:
        stop(proc, timeout=10)


def listens(ns: Netns, host: str, port: int) -> Callable[[], bool]:
    """A check that something in the namespace accepts connections at host:port."""

    def connect() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return lambda: ns.call(connect)


@dataclass(frozen=True)
class Deployment:
    config: Path
    ds: list[str]
    knot_confs: dict[str, str]  # name server address -> its Knot configuration
    sockets: dict[str, Path]  # name server address -> the dnstap socket its reader listens on


def deploy(directory: Path) -> Deployment:
    """`havedane init` (the classic probes) and `havedane zone --sign --knot-conf
    --dnstap-socket`: one zone file, one Knot configuration per name server, differing
    only in the socket its mod-dnstap writes to."""
    havedane("init", "--domain", ZONE, "--dir", str(directory))
    config = directory / "havedane.toml"
    sockets = {k: directory / f"dnstap-{i}.sock" for i, k in enumerate(KNOTS)}
    zone_file, knot_conf = directory / f"{ZONE}.zone", directory / "knot.conf"
    proc = havedane("zone", "--config", str(config), "--sign", "--address", RECEIVER, "--out", str(zone_file),
                    "--knot-conf", str(knot_conf), "--dnstap-socket", str(sockets[KNOTS[0]]))  # fmt: skip
    ds = [line for line in proc.stderr.splitlines() if " DS " in line]
    assert ds, proc.stderr
    first = knot_conf.read_text()
    sink = f'sink: "unix:{sockets[KNOTS[0]]}"'
    assert first.count(sink) == 1, f"lab: `havedane zone --knot-conf` wrote no {sink}:\n{first}"
    confs = {k: first.replace(sink, f'sink: "unix:{sockets[k]}"') for k in KNOTS}
    return Deployment(config, ds, confs, sockets)


@contextlib.contextmanager
def name_servers(ns: Netns, directory: Path, d: Deployment) -> Iterator[dict[str, Path]]:
    """Per name server: its dnstap reader (`serve --role dns`, started first: it makes the
    socket Knot connects to), then its Knot. Yields each reader's log."""
    logs = {}
    with contextlib.ExitStack() as stack:
        for i, k in enumerate(KNOTS):
            log = logs[k] = directory / f"reader-{i}.log"
            env = {"HAVEDANE_DNS_DNSTAP_SOCKET": str(d.sockets[k])}
            proc = serve(ns, d.config, log, "--role", "dns", env=env)
            stack.enter_context(running(proc, log, d.sockets[k].exists, f"dnstap reader for {k}"))
            knot = directory / f"knot-{i}"
            stack.enter_context(dnsservers.knot_as_written(ns, knot, d.knot_confs[k], k, [ZONE]))
        yield logs


@contextlib.contextmanager
def receiver(ns: Netns, directory: Path, d: Deployment) -> Iterator[None]:
    """`serve --role smtp` and `--role web`, with `[dns] dnstap_socket` set as on the name
    servers' hosts (docs/scaling.md: the same config everywhere): the roles other than
    `all` and `dns` start no reader, but the page knows DNS evidence is collected."""
    env = {"HAVEDANE_VERDICT_GRACE": GRACE, "HAVEDANE_DNS_DNSTAP_SOCKET": str(d.sockets[KNOTS[0]])}
    roles = {
        "smtp": ("--smtp-listen", f"{RECEIVER}:25", (RECEIVER, 25)),
        "web": ("--web-listen", f"{WEB[0]}:{WEB[1]}", WEB),
    }
    with contextlib.ExitStack() as stack:
        for role, (option, value, at) in roles.items():
            log = directory / f"havedane-serve-{role}.log"
            proc = serve(ns, d.config, log, "--role", role, option, value, env=env)
            stack.enter_context(running(proc, log, listens(ns, *at), f"havedane serve --role {role}"))
        yield


@contextlib.contextmanager
def build(directory: Path) -> Iterator[DnsWorld]:
    with contextlib.ExitStack() as stack:
        ns = Netns("havedane-dlab")
        stack.callback(ns.delete)  # registered first: runs last, after every process is gone
        ns.create(VALIDATING)
        d = deploy(directory / "havedane")
        readers = stack.enter_context(name_servers(ns, directory, d))
        stack.enter_context(unbound(ns, directory / "unbound-validating", VALIDATING, d.ds, True))
        stack.enter_context(unbound(ns, directory / "unbound-iterator", NON_VALIDATING, d.ds, False))
        ready = time.monotonic()
        stack.enter_context(receiver(ns, directory, d))
        resolv = directory / "resolv-nonvalidating.conf"
        resolv.write_text(f"nameserver {NON_VALIDATING}\noptions trust-ad timeout:2 attempts:2\n")
        resolver_of = {"dane": VALIDATING, "may": VALIDATING, "dane-nonvalidating": NON_VALIDATING}
        senders = {}
        for name, address in SENDERS.items():
            where = ns if resolver_of[name] == VALIDATING else PrivateResolver(ns, resolv)
            pf = Postfix(where, directory / f"postfix-{name}", name, address, ZONE, name.startswith("dane"))
            senders[name] = stack.enter_context(pf.running())
        store = d.config.parent / "havedane.sqlite3"
        yield DnsWorld(ns, directory, d.config, store, senders, readers, ready)

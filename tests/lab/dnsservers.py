"""Knot (authoritative: on the configuration `havedane zone --knot-conf` wrote, or on
the lab's own for a variant of the zone) and Unbound (validating resolver whose only
trust anchor is the zone's DS), configured for the lab."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from .netns import Netns, stop, wait_until

KNOT_CONF = """\
server:
    rundir: "{dir}"
    listen: {address}@53
log:
  - target: stderr
    any: info
database:
    storage: "{dir}"
template:
  - id: default
    storage: "{dir}"
    # Serve the file exactly as written: no signing, no journal, never write it back.
    dnssec-signing: off
    zonefile-load: whole
    journal-content: none
    zonefile-sync: -1
zone:
{zones}"""

# on: Knot checks every signature and the NSEC3 chain on load and refuses a zone that
# fails, an independent validator in front of Unbound. Off only for a zone that is
# broken on purpose (or not signed at all).
KNOT_ZONE = """\
  - domain: {zone}
    file: "{zone_file}"
    dnssec-validation: {validation}
"""

UNBOUND_CONF = """\
server:
    interface: {address}
    port: 53
    outgoing-interface: {address}
    do-ip6: no
    # The lab's servers are on 127/8, which Unbound otherwise never asks.
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    num-threads: 1
    module-config: "validator iterator"
    # Our DS is the only trust anchor; nothing outside the lab zone is ever asked.
    trust-anchor-file: "{dir}/anchor.ds"
    local-zone: "." refuse
    local-zone: "{zone}." transparent
    qname-minimisation: no
    prefetch: no
stub-zone:
    name: "{zone}."
    stub-addr: {authoritative}
    stub-prime: no
remote-control:
    control-enable: no
"""


@dataclass(frozen=True)
class Answer:
    rcode: str
    ad: bool
    rrsets: list[str]
    aa: bool = False  # authoritative: from a zone the server has loaded


def query(
    ns: Netns,
    server: str,
    name: str,
    rdtype: str,
    checking_disabled: bool = False,
    timeout: float = 3,
    tcp: bool = False,
) -> Answer:
    """One DNSSEC-OK query from inside the namespace (UDP, or TCP)."""
    msg = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), want_dnssec=True)
    if checking_disabled:
        msg.flags |= dns.flags.CD

    def ask() -> dns.message.Message:
        if tcp:
            return dns.query.tcp(msg, server, timeout=timeout)
        return dns.query.udp(msg, server, timeout=timeout)

    reply = ns.call(ask, timeout=timeout + 2)
    return Answer(
        dns.rcode.to_text(reply.rcode()),
        bool(reply.flags & dns.flags.AD),
        [rrset.to_text() for rrset in reply.answer],
        bool(reply.flags & dns.flags.AA),
    )


def _answers(ns: Netns, server: str, name: str, rdtype: str, want_ad: bool = False, want_aa: bool = False) -> bool:
    # TCP: until the server listens the connection is refused at once, where a UDP
    # query would wait out its whole timeout.
    try:
        a = query(ns, server, name, rdtype, timeout=1, tcp=True)
    except (OSError, TimeoutError, dns.exception.Timeout):
        return False
    return a.rcode == "NOERROR" and bool(a.rrsets) and (a.ad or not want_ad) and (a.aa or not want_aa)


def as_operator(knot_conf: str, address: str, directory: Path) -> str:
    """The configuration `havedane zone --knot-conf` wrote, changed only where the lab's
    host differs from an operator's: it listens on `address` (the lab runs other DNS
    servers on port 53 of other addresses) and keeps its run directory, database and a
    log in `directory` (not the host's /run/knot and /var/lib/knot)."""
    edits = [
        ("    listen: 0.0.0.0@53\n", f'    listen: {address}@53\n    rundir: "{directory}"\n'),
        ("template:\n  - id: default\n", f'template:\n  - id: default\n    storage: "{directory}"\n'),
    ]
    for old, new in edits:
        assert knot_conf.count(old) == 1, f"lab: `havedane zone --knot-conf` no longer writes {old!r}:\n{knot_conf}"
        knot_conf = knot_conf.replace(old, new)
    return knot_conf + f'database:\n    storage: "{directory}"\nlog:\n  - target: stderr\n    any: info\n'


@contextlib.contextmanager
def knot_as_written(ns: Netns, directory: Path, knot_conf: str, address: str, zones: list[str]) -> Iterator[None]:
    """knotd on the configuration `havedane zone --knot-conf` wrote (see as_operator),
    serving the zone files `havedane zone` wrote where it wrote them. Ready when every
    zone answers its SOA authoritatively (AA, NOERROR): a zone Knot refused to load
    answers SERVFAIL, and the wait ends with Knot's own words."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "knot.conf"
    conf.write_text(as_operator(knot_conf, address, directory))
    proc = ns.popen(["knotd", "-c", str(conf)], directory / "knotd.log")
    try:
        _wait(
            lambda: (
                _alive(proc, directory / "knotd.log")
                and all(_answers(ns, address, z, "SOA", want_aa=True) for z in zones)
            ),
            f"knotd answering authoritatively for {', '.join(zones)} at {address}",
            directory / "knotd.log",
        )
        yield
    finally:
        stop(proc)


@dataclass(frozen=True)
class ServedZone:
    name: str
    text: str
    validation: bool  # Knot checks its signatures on load (off: broken on purpose, or unsigned)


@contextlib.contextmanager
def knot(ns: Netns, directory: Path, address: str, zone: str, zone_text: str, validation: bool) -> Iterator[None]:
    with knot_zones(ns, directory, address, [ServedZone(zone, zone_text, validation)]):
        yield


# Every query Knot receives, as dnstap frames, into a file: written out when knotd
# stops (Knot's file sink does not flush before), so read it after the context exits.
DNSTAP_FILE = "dnstap.fstrm"
KNOT_DNSTAP = """\
mod-dnstap:
  - id: tap
    sink: "{dir}/{file}"
    log-queries: on
    log-responses: off
"""


@contextlib.contextmanager
def knot_zones(
    ns: Netns,
    directory: Path,
    address: str,
    zones: list[ServedZone],
    ready: list[str] | None = None,
    dnstap: bool = False,
) -> Iterator[None]:
    """One knotd at `address` with the lab's own configuration, serving each zone's file
    exactly as written; ready when the zones in `ready` (default: all) answer. With
    `dnstap`, the queries it receives go to `directory`/DNSTAP_FILE."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for z in zones:
        zone_file = directory / f"{z.name}.zone"
        zone_file.write_text(z.text)
        entries.append(KNOT_ZONE.format(zone=z.name, zone_file=zone_file, validation="on" if z.validation else "off"))
    conf = directory / "knot.conf"
    text = KNOT_CONF.format(dir=directory, address=address, zones="".join(entries))
    if dnstap:
        template = "template:\n  - id: default\n"
        tap = KNOT_DNSTAP.format(dir=directory, file=DNSTAP_FILE)
        text = text.replace(template, tap + template + "    global-module: mod-dnstap/tap\n")
    conf.write_text(text)
    proc = ns.popen(["knotd", "-c", str(conf)], directory / "knotd.log")
    try:
        # Ready when every zone is loaded (with validation on: only if it validated).
        names = ready if ready is not None else [z.name for z in zones]
        _wait(
            lambda: _alive(proc, directory / "knotd.log") and all(_answers(ns, address, z, "SOA") for z in names),
            f"knotd answering for {', '.join(names)} at {address}",
            directory / "knotd.log",
        )
        yield
    finally:
        stop(proc)


@contextlib.contextmanager
def unbound(
    ns: Netns, directory: Path, address: str, zone: str, ds: list[str], authoritative: str, ready_name: str
) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "anchor.ds").write_text("\n".join(ds) + "\n")
    conf = directory / "unbound.conf"
    conf.write_text(UNBOUND_CONF.format(dir=directory, address=address, zone=zone, authoritative=authoritative))
    proc = ns.popen(["unbound", "-d", "-c", str(conf)], directory / "unbound.log")
    try:
        _wait(
            lambda: _alive(proc, directory / "unbound.log") and _answers(ns, address, ready_name, "A", want_ad=True),
            f"unbound at {address} validating {ready_name}",
            directory / "unbound.log",
        )
        yield
    finally:
        stop(proc)


def _wait(check: Callable[[], bool], what: str, log: Path) -> None:
    """Wait for a server; when it does not come, say why in its own words."""
    try:
        wait_until(check, 10, what)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; its log ends:\n{log.read_text()[-2000:]}") from None


def _alive(proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"lab: {log.stem} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
    return True

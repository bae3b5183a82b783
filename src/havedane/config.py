"""havedane.toml: loading, environment overrides and validation.

Every key can be overridden by HAVEDANE_<SECTION>_<KEY> (top-level keys by
HAVEDANE_<KEY>). A bad file, an unknown key or a bad value is a ConfigError whose
message names the key: the CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from havedane import probes, store


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> Listen:
    """'127.0.0.1:25', '[::1]:25' or ':25' (all addresses) -> Listen."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected ADDRESS:PORT, got {value!r}")
    host = host.strip("[]")
    if host:
        ipaddress.ip_address(host)  # raises ValueError for a bad address
    return Listen(host or "0.0.0.0", int(port))


@dataclass(frozen=True)
class Config:
    domain: str
    path: Path | None  # the file it came from; relative paths are resolved against its folder
    probes: tuple[probes.Probe, ...]
    probe_addresses: dict[str, str]  # probe -> listener address of its own
    smtp_listen: tuple[Listen, ...]
    smtp_hostname: str
    max_message_size: int
    smtp_timeout: float
    max_connections: int
    max_connections_per_client: int
    max_recipients: int
    max_messages_per_connection: int
    max_deliveries_per_probe: int
    max_sessions_per_test: int
    proxy_protocol: bool
    web_listen: Listen
    public_url: str
    trusted_proxies: tuple[str, ...]
    max_streams: int
    max_streams_per_client: int
    stream_send_timeout: float
    store_url: str
    store_busy_timeout: float
    store_write_timeout: float
    tls_dir: Path
    grace: float
    retention_days: float
    max_tests: int
    max_orphan_sessions: int
    reclaim_after: float
    tests_per_minute: int
    tests_per_minute_total: int
    dnstap_socket: Path | None = None  # None: no dnstap feed, no DNS evidence on this deployment
    max_dns_queries_per_test: int = 200
    max_zone_queries: int = 100_000
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty string")
    return v


def _positive_int(v: Any) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"must be a positive integer, got {v!r}")
    return v


def _positive_float(v: Any) -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ValueError(f"must be a number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise ValueError(f"must be a number >= 0, got {v!r}")
    return float(v)


def _above_zero(v: Any) -> float:
    """A duration that cannot be zero: 0 would close every connection at once
    ([smtp] timeout) or expire every test at birth ([retention] days)."""
    f = _positive_float(v)
    if f == 0:
        raise ValueError("must be greater than 0")
    return f


def _path_or_empty(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a path (or empty), got {v!r}")
    return v.strip()


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        return v.lower() in {"1", "true", "yes", "on"}
    raise ValueError(f"must be true or false, got {v!r}")


def _str_list(v: Any) -> list[str]:
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError("must be a list of strings")
    return v


def _listen_list(v: Any) -> list[Listen]:
    listen = [parse_listen(s) for s in _str_list(v)]
    if not listen:  # probes with addresses of their own take the port of the first
        raise ValueError("must name at least one ADDRESS:PORT")
    return listen


def _listen(v: Any) -> Listen:
    return parse_listen(_str(v))


def _networks(v: Any) -> list[str]:
    nets = _str_list(v)
    for n in nets:
        ipaddress.ip_network(n, strict=False)
    return nets


def _addresses(v: Any) -> dict[str, str]:
    """{probe: IP}; in the environment "notls=192.0.2.8,unusable-notls=192.0.2.9"."""
    if isinstance(v, str):
        pairs = [p.partition("=") for p in v.split(",") if p.strip()]
        v = {name.strip(): addr.strip() for name, _, addr in pairs}
    if not isinstance(v, dict):
        raise ValueError('must be a table of probe = "IP address"')
    for name, addr in v.items():
        if name not in probes.CATALOGUE:
            raise ValueError(f"unknown probe {name}")
        if not isinstance(addr, str):
            raise ValueError(f"{name}: must be an IP address")
        ipaddress.ip_address(addr)
    return dict(v)


LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # RFC 1123 §2.1 host name label


def _domain(v: Any) -> str:
    """A host name in ASCII: an international name is taken as its A-label
    (RFC 5891), the form DNS and certificates carry."""
    bad = ValueError(f"must be a domain name like havedane.example, got {v!r}")
    d = _str(v).strip().lower().rstrip(".")
    try:
        d = d.encode("idna").decode("ascii")
    except UnicodeError:
        raise bad from None
    labels = d.split(".")
    # An all-numeric last label is an IP address, not a domain (RFC 3696 §2).
    if len(labels) < 2 or len(d) > 253 or labels[-1].isdigit() or not all(LABEL.fullmatch(x) for x in labels):
        raise bad
    return d


# section -> key -> (parser, default). "" is the top level.
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "": {"domain": (_domain, None)},
    "probes": {"enabled": (_str_list, None), "matrix": (_bool, False), "addresses": (_addresses, {})},
    "smtp": {
        "listen": (_listen_list, ["127.0.0.1:2525"]),
        "hostname": (_str, None),
        "max_message_size": (_positive_int, 1_048_576),
        "timeout": (_above_zero, 300.0),
        "max_connections": (_positive_int, 200),
        "max_connections_per_client": (_positive_int, 20),
        "max_recipients": (_positive_int, 20),
        "max_messages_per_connection": (_positive_int, 100),
        "max_deliveries_per_probe": (_positive_int, 50),
        "max_sessions_per_test": (_positive_int, 200),
        "proxy_protocol": (_bool, False),
    },
    "web": {
        "listen": (_listen, "127.0.0.1:8080"),
        "public_url": (_str, None),
        "trusted_proxies": (_networks, []),
        "max_streams": (_positive_int, 1000),
        "max_streams_per_client": (_positive_int, 10),
        "stream_send_timeout": (_positive_float, 30.0),
    },
    "store": {"url": (_str, None), "busy_timeout": (_positive_float, 10.0), "write_timeout": (_positive_float, 30.0)},
    "tls": {"dir": (_str, "tls")},
    "verdict": {"grace": (_positive_float, 60.0)},
    "retention": {
        "days": (_above_zero, 7.0),
        "max_tests": (_positive_int, 100_000),
        "max_orphan_sessions": (_positive_int, 100_000),
        "reclaim_after": (_positive_float, 3600.0),
    },
    "limits": {"tests_per_minute": (_positive_int, 10), "tests_per_minute_total": (_positive_int, 600)},
    "dns": {
        "dnstap_socket": (_path_or_empty, ""),
        "max_queries_per_test": (_positive_int, 200),
        "max_zone_queries": (_positive_int, 100_000),
    },
}


# HAVEDANE_* variables that are not configuration: read by the test suite only.
NOT_CONFIG = {"HAVEDANE_PG_BIN", "HAVEDANE_CHROMIUM", "HAVEDANE_LAB_KEEP"}


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    known = set(NOT_CONFIG)
    for section, keys in SCHEMA.items():
        for key in keys:
            name = "HAVEDANE_" + (f"{section}_{key}" if section else key).upper()
            known.add(name)
            if name in env:
                out.setdefault(section, {})[key] = env[name]
    # A typo (HAVEDANE_VERDICT_GRCE) would otherwise be ignored in silence, like an
    # unknown key in the file would not be.
    unknown = sorted(n for n in env if n.startswith("HAVEDANE_") and n not in known)
    if unknown:
        raise ConfigError(f"unknown environment variable {unknown[0]} (not a configuration key)")
    return out


def _gradable(enabled: tuple[probes.Probe, ...], names: list[str] | None) -> None:
    """The headline verdict compares what a sender delivered with what it refused
    (RFC 7672 §2.2): without a classic probe of each kind there is nothing to compare."""
    for deliver, kind in ((True, "must deliver to"), (False, "must refuse")):
        if not any(p.classic and (p.expect is probes.Expect.DELIVER) is deliver for p in enabled):
            choices = [p.name for p in probes.CLASSIC if (p.expect is probes.Expect.DELIVER) is deliver]
            raise ConfigError(
                f"probes.enabled: no verdict is possible without a classic probe a sender {kind} "
                f"(add one of {', '.join(choices)}; got {names})"
            )


def load(path: Path | None, env: Mapping[str, str] | None = None, default_domain: str | None = None) -> Config:
    """Read `path` (or nothing), apply HAVEDANE_* overrides, validate."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (run `havedane init --domain D` first)") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read: {e}") from None

    values: dict[str, dict[str, Any]] = {s: {} for s in SCHEMA}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SCHEMA or not key:
                raise ConfigError(f"unknown section [{key}]")
            for k, v in value.items():
                if k not in SCHEMA[key]:
                    raise ConfigError(f"unknown key {key}.{k}")
                values[key][k] = v
        elif key in SCHEMA[""]:
            values[""][key] = value
        else:
            raise ConfigError(f"unknown key {key}")
    for section, kv in _env_overrides(env).items():
        values[section].update(kv)

    parsed: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        parsed[section] = {}
        for key, (parser, default) in keys.items():
            name = f"{section}.{key}" if section else key
            if key in values[section]:
                try:
                    parsed[section][key] = parser(values[section][key])
                except ValueError as e:
                    raise ConfigError(f"{name}: {e}") from None
            else:
                parsed[section][key] = parser(default) if default is not None else None

    domain = parsed[""]["domain"] or default_domain
    if not domain:
        raise ConfigError('domain: missing (set domain = "havedane.example" or HAVEDANE_DOMAIN)')
    try:
        enabled = probes.enabled(parsed["probes"]["enabled"], parsed["probes"]["matrix"])
    except KeyError as e:
        raise ConfigError(f"probes.enabled: unknown probe {e.args[0]} (known: {', '.join(probes.CATALOGUE)})") from None
    _gradable(enabled, parsed["probes"]["enabled"])
    probe_addresses: dict[str, str] = parsed["probes"]["addresses"]
    homeless = [p.name for p in enabled if not p.starttls and p.name not in probe_addresses]
    if homeless:
        # Whether STARTTLS is offered is decided at EHLO, before the client names a
        # domain: such probes are told apart by the address the client connected to.
        raise ConfigError(f"probes.addresses: {', '.join(homeless)} need(s) a listener address of its own")

    base = path.parent if path else Path.cwd()
    store_url = parsed["store"]["url"] or f"sqlite:///{base / 'havedane.sqlite3'}"
    try:
        db = store.parse_url(store_url).path
    except store.StoreError as e:
        raise ConfigError(f"store.url: {e}") from None
    if db is not None:
        store_url = f"{store.SQLITE}{db if db.is_absolute() else base / db}"
    tls_dir = Path(parsed["tls"]["dir"])
    dnstap = Path(parsed["dns"]["dnstap_socket"]) if parsed["dns"]["dnstap_socket"] else None
    web = parsed["web"]
    return Config(
        domain=domain,
        path=path,
        probes=enabled,
        probe_addresses=probe_addresses,
        smtp_listen=tuple(parsed["smtp"]["listen"]),
        smtp_hostname=parsed["smtp"]["hostname"] or f"mx.{domain}",
        max_message_size=parsed["smtp"]["max_message_size"],
        smtp_timeout=parsed["smtp"]["timeout"],
        max_connections=parsed["smtp"]["max_connections"],
        max_connections_per_client=parsed["smtp"]["max_connections_per_client"],
        max_recipients=parsed["smtp"]["max_recipients"],
        max_messages_per_connection=parsed["smtp"]["max_messages_per_connection"],
        max_deliveries_per_probe=parsed["smtp"]["max_deliveries_per_probe"],
        max_sessions_per_test=parsed["smtp"]["max_sessions_per_test"],
        proxy_protocol=parsed["smtp"]["proxy_protocol"],
        web_listen=web["listen"],
        public_url=(web["public_url"] or f"http://{web['listen']}").rstrip("/"),
        trusted_proxies=tuple(web["trusted_proxies"]),
        max_streams=web["max_streams"],
        max_streams_per_client=web["max_streams_per_client"],
        stream_send_timeout=web["stream_send_timeout"],
        store_url=store_url,
        store_busy_timeout=parsed["store"]["busy_timeout"],
        store_write_timeout=parsed["store"]["write_timeout"],
        tls_dir=tls_dir if tls_dir.is_absolute() else base / tls_dir,
        grace=parsed["verdict"]["grace"],
        retention_days=parsed["retention"]["days"],
        max_tests=parsed["retention"]["max_tests"],
        max_orphan_sessions=parsed["retention"]["max_orphan_sessions"],
        reclaim_after=parsed["retention"]["reclaim_after"],
        tests_per_minute=parsed["limits"]["tests_per_minute"],
        tests_per_minute_total=parsed["limits"]["tests_per_minute_total"],
        dnstap_socket=dnstap if dnstap is None or dnstap.is_absolute() else base / dnstap,
        max_dns_queries_per_test=parsed["dns"]["max_queries_per_test"],
        max_zone_queries=parsed["dns"]["max_zone_queries"],
        raw=data,
    )


def _probes_section() -> str:
    """The [probes] keys of the template, named from the catalogue."""
    classic = [p.name for p in probes.CATALOGUE.values() if p.classic]
    matrix = [p.name for p in probes.CATALOGUE.values() if not p.classic]
    # Example addresses from TEST-NET-1 (RFC 5737), one per probe without STARTTLS.
    homeless = [p.name for p in probes.CATALOGUE.values() if not p.starttls]
    addresses = ", ".join(f'"{name}" = "192.0.2.{8 + i}"' for i, name in enumerate(homeless))
    comment = textwrap.wrap(
        "The classic probes decide the headline verdict; `matrix = true` adds the RFC 7672 "
        f"conformance probes (see README): {', '.join(matrix)}.",
        width=86,
    )
    return "\n".join(
        [*(f"# {line}" for line in comment), f"enabled = {json.dumps(classic)}", "matrix = false"]
        + ["# Probes without STARTTLS need a listener address of their own, e.g."]
        + [f"# addresses = {{ {addresses} }}"]
    )


def render(domain: str, smtp_listen: list[str], web_listen: str) -> str:
    """The havedane.toml written by `havedane init`: every key, with its default."""
    listen = ", ".join(f'"{s}"' for s in smtp_listen)
    return f"""# havedane configuration. Every key may be overridden by HAVEDANE_<SECTION>_<KEY>.
domain = "{domain}"

[probes]
{_probes_section()}

[smtp]
listen = [{listen}]
hostname = "mx.{domain}"
max_message_size = 1048576      # bytes; larger messages get 552
timeout = 300                   # seconds of silence before 421 and close (RFC 5321 §4.5.3.2)
max_connections = 200           # beyond this: 421 4.7.0
max_connections_per_client = 20
max_recipients = 20
max_messages_per_connection = 100  # beyond: 421 4.7.0 at MAIL, then close
max_deliveries_per_probe = 50   # kept per probe of a test; beyond: 550 5.2.2 at RCPT
max_sessions_per_test = 200     # connections that named a test; beyond: 550 5.2.2 at RCPT
proxy_protocol = false          # expect a PROXY v1/v2 header (behind a TCP load balancer)

[web]
listen = "{web_listen}"
# public_url = "https://{domain}"
trusted_proxies = []            # networks whose X-Forwarded-For is believed
max_streams = 1000              # live pages (event streams) open at once; beyond: 503, the page polls
max_streams_per_client = 10     # per client address (IPv6: per /64); beyond: 429, the page polls
stream_send_timeout = 30        # seconds a live page may stall its reader before it is dropped

[store]
url = "sqlite:///havedane.sqlite3"
busy_timeout = 10               # seconds a writer waits for another (SQLite)
write_timeout = 30              # seconds before any write gives up (451 / 503): a stuck disk never hangs

[tls]
dir = "tls"

[verdict]
grace = 60                      # seconds after the first delivery before missing probes count

[retention]
days = 7
max_tests = 100000
max_orphan_sessions = 100000    # sessions tied to no test (refusals, strangers): the newest are kept
reclaim_after = 3600            # seconds: when full, tests this old that never received anything make room

[limits]
tests_per_minute = 10           # per client address (IPv6: per /64)
tests_per_minute_total = 600    # from all addresses together (per web process); beyond: 503

[dns]
dnstap_socket = ""              # unix socket Knot's mod-dnstap writes to (`serve --role dns`); empty: no DNS evidence
max_queries_per_test = 200      # DNS queries kept per test; beyond, dropped
max_zone_queries = 100000       # zone-level queries (DNSKEY, DS, ...): kept a day at most, the newest this many
"""

"""The keys of havedane.toml: each one's parser and default (SCHEMA), the value types
they produce, and how the values of the file and the environment are gathered and parsed.

Every key can be overridden by HAVEDANE_<SECTION>_<KEY> (top-level keys by
HAVEDANE_<KEY>). A bad value is a ValueError of its parser, said by `parse` as a
ConfigError that names the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from havedane import probes


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


def domain_name(v: Any) -> str:
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
    "": {"domain": (domain_name, None)},
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
        "metrics_from": (_networks, ["127.0.0.0/8", "::1/128"]),
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


def env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
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


def gather(data: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The raw value of every key set in the file (`data`, parsed TOML) or the environment,
    by section; an unknown section, key or HAVEDANE_* variable is an error."""
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
    for section, kv in env_overrides(env).items():
        values[section].update(kv)
    return values


def parse(values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every key of SCHEMA, parsed from `values` (see `gather`) or its default (None: none)."""
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
    return parsed

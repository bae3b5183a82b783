"""havedane.toml: loading, environment overrides and validation.

Every key can be overridden by HAVEDANE_<SECTION>_<KEY> (top-level keys by
HAVEDANE_<KEY>). A bad file, an unknown key or a bad value is a ConfigError whose
message names the key: the CLI prints it as one line and exits 2. The keys, their
parsers and defaults are in config_keys.py; the template `havedane init` writes is in
config_template.py.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from havedane import probes, store
from havedane.config_keys import SCHEMA, ConfigError, Listen, gather, parse, parse_listen
from havedane.config_template import render

__all__ = ["SCHEMA", "Config", "ConfigError", "Listen", "load", "parse_listen", "render"]


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
    metrics_from: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # who may read GET /metrics
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


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
    data = _read(path) if path is not None else {}
    parsed = parse(gather(data, os.environ if env is None else env))
    domain = parsed[""]["domain"] or default_domain
    if not domain:
        raise ConfigError('domain: missing (set domain = "havedane.example" or HAVEDANE_DOMAIN)')
    enabled, probe_addresses = _probes(parsed["probes"])
    base = path.parent if path else Path.cwd()
    tls_dir = Path(parsed["tls"]["dir"])
    dnstap = Path(parsed["dns"]["dnstap_socket"]) if parsed["dns"]["dnstap_socket"] else None
    smtp, web, retention = parsed["smtp"], parsed["web"], parsed["retention"]
    return Config(
        domain=domain,
        path=path,
        probes=enabled,
        probe_addresses=probe_addresses,
        smtp_listen=tuple(smtp["listen"]),
        smtp_hostname=smtp["hostname"] or f"mx.{domain}",
        max_message_size=smtp["max_message_size"],
        smtp_timeout=smtp["timeout"],
        max_connections=smtp["max_connections"],
        max_connections_per_client=smtp["max_connections_per_client"],
        max_recipients=smtp["max_recipients"],
        max_messages_per_connection=smtp["max_messages_per_connection"],
        max_deliveries_per_probe=smtp["max_deliveries_per_probe"],
        max_sessions_per_test=smtp["max_sessions_per_test"],
        proxy_protocol=smtp["proxy_protocol"],
        web_listen=web["listen"],
        public_url=(web["public_url"] or f"http://{web['listen']}").rstrip("/"),
        trusted_proxies=tuple(web["trusted_proxies"]),
        max_streams=web["max_streams"],
        max_streams_per_client=web["max_streams_per_client"],
        stream_send_timeout=web["stream_send_timeout"],
        metrics_from=tuple(web["metrics_from"]),
        store_url=_store_url(parsed["store"]["url"], base),
        store_busy_timeout=parsed["store"]["busy_timeout"],
        store_write_timeout=parsed["store"]["write_timeout"],
        tls_dir=tls_dir if tls_dir.is_absolute() else base / tls_dir,
        grace=parsed["verdict"]["grace"],
        retention_days=retention["days"],
        max_tests=retention["max_tests"],
        max_orphan_sessions=retention["max_orphan_sessions"],
        reclaim_after=retention["reclaim_after"],
        tests_per_minute=parsed["limits"]["tests_per_minute"],
        tests_per_minute_total=parsed["limits"]["tests_per_minute_total"],
        dnstap_socket=dnstap if dnstap is None or dnstap.is_absolute() else base / dnstap,
        max_dns_queries_per_test=parsed["dns"]["max_queries_per_test"],
        max_zone_queries=parsed["dns"]["max_zone_queries"],
        raw=data,
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run `havedane init --domain D` first)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None


def _probes(section: Mapping[str, Any]) -> tuple[tuple[probes.Probe, ...], dict[str, str]]:
    """The probes enabled, and the listener addresses of their own ([probes])."""
    try:
        enabled = probes.enabled(section["enabled"], section["matrix"])
    except KeyError as e:
        raise ConfigError(f"probes.enabled: unknown probe {e.args[0]} (known: {', '.join(probes.CATALOGUE)})") from None
    _gradable(enabled, section["enabled"])
    probe_addresses: dict[str, str] = section["addresses"]
    homeless = [p.name for p in enabled if not p.starttls and p.name not in probe_addresses]
    if homeless:
        # Whether STARTTLS is offered is decided at EHLO, before the client names a
        # domain: such probes are told apart by the address the client connected to.
        raise ConfigError(f"probes.addresses: {', '.join(homeless)} need(s) a listener address of its own")
    return enabled, probe_addresses


def _store_url(url: str | None, base: Path) -> str:
    """[store] url, a relative SQLite path taken relative to `base` (the file's folder)."""
    store_url = url or f"sqlite:///{base / 'havedane.sqlite3'}"
    try:
        db = store.parse_url(store_url).path
    except store.StoreError as e:
        raise ConfigError(f"store.url: {e}") from None
    if db is not None:
        store_url = f"{store.SQLITE}{db if db.is_absolute() else base / db}"
    return store_url

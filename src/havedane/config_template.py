"""The havedane.toml that `havedane init` writes: every key with its default, the
probe list named from the catalogue (havedane.probes).
"""

from __future__ import annotations

import json
import textwrap

from havedane import probes


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
metrics_from = ["127.0.0.0/8", "::1/128"]  # networks that may read GET /metrics (Prometheus); [] for none

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

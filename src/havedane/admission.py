"""Who gets in, and how much each may leave: the listeners, the connection caps (per
client address and in total), and a test's limits at RCPT.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from havedane import probes
from havedane.config import Config, Listen
from havedane.metrics import Metrics
from havedane.quota import Usage


async def listen(
    config: Config, protocol: Callable[[bool], asyncio.Protocol], listens: tuple[Listen, ...]
) -> list[asyncio.Server]:
    """A server per configured address, with STARTTLS offered (`protocol(True)`), and one
    per address of a probe that offers none (`protocol(False)`)."""
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: protocol(True), where.host, where.port, reuse_address=True)
        for where in listens
    ]
    # Probes that offer no STARTTLS: decided at EHLO, before the client names a
    # domain, so they listen on addresses of their own (on the first listener's port).
    for probe in config.probes:
        address = config.probe_addresses.get(probe.name)
        if address and not probe.starttls:
            server = await loop.create_server(lambda: protocol(False), address, listens[0].port, reuse_address=True)
            servers.append(server)
    return servers


def probe_at(config: Config, local_ip: str) -> probes.Probe | None:
    """The probe that listens on an address of its own, if `local_ip` is one."""
    for probe in config.probes:
        if config.probe_addresses.get(probe.name) == local_ip:
            return probe
    return None


class Admission:
    """Connection slots: at most `max_connections` in all, `max_connections_per_client`
    from one address. A slot is counted for the TCP peer and released for the same
    address, even when a PROXY header names another client later."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.active: dict[str, int] = {}
        self.total_active = 0

    def admit(self, client_ip: str) -> str | None:
        """None (a slot is taken), or the 421 reply that turns the connection away."""
        if self.total_active >= self.config.max_connections:
            return self.metrics.refused("max_connections", "421 4.7.0 Too many connections, try again later")
        if self.active.get(client_ip, 0) >= self.config.max_connections_per_client:
            reply = "421 4.7.0 Too many connections from your address, try again later"
            return self.metrics.refused("max_connections_per_client", reply)
        self.total_active += 1
        self.active[client_ip] = self.active.get(client_ip, 0) + 1
        return None

    def release(self, client_ip: str) -> None:
        self.total_active -= 1
        left = self.active.get(client_ip, 1) - 1
        if left:
            self.active[client_ip] = left
        else:
            self.active.pop(client_ip, None)


def over_limit(config: Config, address: str, probe: str, usage: Usage, new_session: bool) -> tuple[str, str] | None:
    """None, or the refusal of a recipient beyond its test's limits: the key of the limit, the reply.

    Beyond a test's limits the answer is permanent (RFC 5321 §4.2.1, 5yz): the test has no
    room until it expires, days later, so a sender's retries (§4.5.4.1) would only cost both
    sides, and a bounce tells the visitor now. 550 with 5.2.2 "mailbox full" (RFC 3463 §3.3),
    not 552: §4.5.3.1.10 tells clients to take a 552 at RCPT as temporary.
    """
    held = usage.deliveries.get(probe, 0)
    if held >= config.max_deliveries_per_probe:
        return "max_deliveries_per_probe", (
            f"550 5.2.2 <{address}>: this test holds {held} messages at {probe}, its most; "
            f"create a new one at {config.public_url}"
        )
    if new_session and usage.sessions >= config.max_sessions_per_test:
        return "max_sessions_per_test", (
            f"550 5.2.2 <{address}>: this test has had {usage.sessions} connections, its most; "
            f"create a new one at {config.public_url}"
        )
    return None

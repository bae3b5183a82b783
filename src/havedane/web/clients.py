"""Who a request comes from: the visitor's address behind trusted proxies, and the group a limit counts."""

from __future__ import annotations

import ipaddress

from starlette.requests import Request

Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


def client_ip(request: Request, trusted: Networks) -> str:
    """The visitor's address: X-Forwarded-For is believed only from trusted proxies,
    read right to left, stopping at the first address that is not a trusted proxy."""
    peer = request.client.host if request.client else "unknown"
    chain = [peer]
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        chain = [a.strip() for a in forwarded.split(",") if a.strip()] + chain
    for addr in reversed(chain):
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return addr if addr == peer else peer
        if not any(ip in net for net in trusted):
            return str(ip)
    return chain[0]


def metrics_allowed(request: Request, trusted: Networks, allowed: Networks) -> bool:
    """Whether the visitor (behind trusted proxies) is in `allowed` ([web] metrics_from).

    A request that a proxy forwarded (X-Forwarded-For, Forwarded: RFC 7239) from a peer
    that is not a trusted proxy is refused: a reverse proxy on this host, left out of
    `trusted_proxies`, would otherwise make every visitor look like the loopback."""
    peer = request.client.host if request.client else ""
    forwarded = "x-forwarded-for" in request.headers or "forwarded" in request.headers
    try:
        ip = ipaddress.ip_address(client_ip(request, trusted))
        if forwarded and not any(ipaddress.ip_address(peer) in net for net in trusted):
            return False
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
    return any(ip in net for net in allowed)


def client_group(ip: str) -> str:
    """Who a limit counts: an IPv4 address, or the /64 of an IPv6 address (RFC 4291 §2.5.1:
    one interface ID per host, so one host commonly holds a whole /64 and can rotate within it)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def requester(request: Request, trusted: Networks) -> str:
    """The group of the request's visitor: what the limits on creations and live pages count."""
    return client_group(client_ip(request, trusted))

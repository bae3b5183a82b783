"""The Postfix bridge: for operators who keep Postfix on port 25.

Postfix receives mail for the probe hosts and hands each recipient to
`havedane deliver` through a `pipe(8)` transport. The envelope comes on argv
(Postfix's ${sender}, ${recipient}, ${client_address}, ${client_helo}); the TLS
version and cipher come from the Received header Postfix adds with
`smtpd_tls_received_header = yes`. Exit codes follow sysexits(3), which pipe(8)
maps to delivery status: EX_NOUSER bounces, EX_TEMPFAIL defers and retries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from havedane import probes, wiretext
from havedane.config import Config
from havedane.model import Delivery, Tls
from havedane.store import Store, StoreError

EX_OK = 0
EX_NOUSER = 67
EX_TEMPFAIL = 75
EX_CONFIG = 78

MAX_HEADER_BYTES = 256 * 1024  # the body is never kept; headers beyond this are not read

# Postfix's smtpd_tls_received_header text, e.g.
#   (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 ...)
USING = re.compile(r"\(using (?P<version>TLSv[\d.]+|SSLv[\d.]+) with cipher (?P<cipher>[A-Za-z0-9_-]+)")
# from helo.example (host.example [192.0.2.1]) by ...
FROM = re.compile(r"^\s*from\s+(?P<helo>\S+)\s+\((?:[^\[\)]*\s)?\[(?P<ip>(?:IPv6:)?[0-9A-Fa-f:.]+)\]\)", re.IGNORECASE)


@dataclass(frozen=True)
class Received:
    helo: str | None
    client_ip: str | None
    tls: Tls | None


def parse_received(value: str) -> Received:
    """What the top Received header (added by our own Postfix) says about the client."""
    text = " ".join(value.split())
    m = FROM.search(text)
    helo = ip = None
    if m:
        helo = m.group("helo")[:255]
        try:
            ip = str(ipaddress.ip_address(m.group("ip").removeprefix("IPv6:")))
        except ValueError:
            ip = None
    u = USING.search(text)
    tls = Tls(u.group("version"), u.group("cipher"), None) if u else None
    return Received(helo, ip, tls)


def read_headers(stream: BinaryIO) -> tuple[dict[str, str], int]:
    """The headers we look at (Received, Message-ID) and the message size; the rest is
    read and dropped. 8-bit, non-UTF-8 and malformed headers never raise."""
    head = bytearray()
    size = 0
    in_head = True
    while chunk := stream.read(65536):
        size += len(chunk)
        if in_head:
            head += chunk
            end = head.find(b"\n\n") if b"\r\n" not in head[:2048] else head.find(b"\r\n\r\n")
            if end >= 0 or len(head) > MAX_HEADER_BYTES:
                in_head = False
                head = head[: end if end >= 0 else MAX_HEADER_BYTES]
    return first_headers(bytes(head), ("received", "message-id")), size


def first_headers(head: bytes, names: tuple[str, ...]) -> dict[str, str]:
    """The first occurrence of each header in `names` (lower case), unfolded
    (RFC 5322 §2.2.3). Lenient on purpose: a line without a colon is skipped rather
    than ending the header section, and bytes that are not UTF-8 (and NUL) are replaced."""
    out: dict[str, str] = {}
    current: str | None = None
    for raw in head.replace(b"\r\n", b"\n").split(b"\n"):
        line = wiretext.decode(raw)
        if line[:1] in (" ", "\t") and current is not None:
            out[current] += " " + line.strip()
            continue
        current = None
        name, sep, value = line.partition(":")
        key = name.strip().lower()
        if sep and key in names and key not in out:
            out[key] = value.strip()
            current = key
    return out


def deliver(
    config: Config,
    store: Store,
    sender: str,
    recipient: str,
    client_address: str | None,
    client_helo: str | None,
    stream: BinaryIO,
) -> tuple[int, str]:
    """Record one delivery; returns (exit status, one-line reason for Postfix's log)."""
    domain = recipient.rpartition("@")[2]
    named = probes.probe_for_host(config.probes, config.domain, domain)
    if named is None:
        return EX_NOUSER, f"{recipient}: not a probe domain of {config.domain}"
    probe, alias = named.probe, named.alias  # the test is named by the host, whatever the local part
    try:
        headers, size = read_headers(stream)
    except OSError as e:
        return EX_TEMPFAIL, f"cannot read the message: {e}"
    received = parse_received(headers.get("received", ""))

    async def run() -> tuple[int, str]:
        await store.open()
        try:
            test = await store.get_test(alias) if alias is not None else None
            if alias is None or test is None or test.created < time.time() - config.retention_days * 86400:
                return EX_NOUSER, f"{recipient}: no such test"
            ip = client_address if client_address and client_address != "unknown" else received.client_ip
            helo = client_helo if client_helo and client_helo != "unknown" else received.helo
            await store.add_deliveries(
                [
                    Delivery(
                        alias=alias,
                        probe=probe.name,
                        received_at=time.time(),
                        client_ip=ip or "unknown",
                        helo=helo,
                        mail_from=sender,
                        rcpt=recipient,
                        tls=received.tls,
                        size=size,
                        message_id=headers.get("message-id", "")[:256] or None,
                    )
                ]
            )
            return EX_OK, f"recorded {recipient}"
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as e:
        return EX_TEMPFAIL, f"database busy or unavailable, try again later: {e}"


def snippets(config: Config, havedane: str, config_file: Path, user: str = "havedane") -> str:
    """main.cf, master.cf and transport map text that hand the probe hosts to havedane."""
    # Every test has its own host below each probe (<alias>.<probe>.<domain>): the
    # `.domain` form matches the names below it, in a domain list and in a transport
    # table alike (transport(5), with parent_domain_matches_subdomains at its default).
    hosts = ["." + p.base(config.domain) for p in config.probes]
    # Postfix opens these from its own working directory (its queue directory), not from the
    # one `postfix-config` ran in: absolute paths, whatever --config was relative to.
    tls = config.tls_dir.resolve()
    transport = "\n".join(f"{h:<40} havedane:" for h in hosts)
    return f"""# --- main.cf (add; adjust paths) -------------------------------------------
# Accept mail for every test's hosts and hand it to havedane (never relay anything else).
relay_domains = $mydestination, {", ".join(hosts)}
transport_maps = hash:/etc/postfix/havedane_transport
havedane_destination_recipient_limit = 1
# Serve havedane's certificates: the TLSA records are computed from them. Key first,
# then the chain (leaf + CA: DANE-TA needs the CA in the chain, RFC 7671 §5.2.2).
smtpd_tls_chain_files =
    {tls}/leaf-ecdsa.key, {tls}/chain-ecdsa.pem,
    {tls}/leaf-rsa.key, {tls}/chain-rsa.pem
smtpd_tls_security_level = may
# TLS version and cipher reach havedane in the Received header.
smtpd_tls_received_header = yes
# Old senders are measured, not turned away.
smtpd_tls_protocols = >=TLSv1
smtpd_tls_ciphers = low

# --- master.cf (add) ---------------------------------------------------------
havedane  unix  -       n       n       -       -       pipe
  flags=q user={user} argv={havedane} deliver --config {config_file}
  --sender ${{sender}} --recipient ${{recipient}}
  --client-address ${{client_address}} --client-helo ${{client_helo}}

# --- /etc/postfix/havedane_transport (then: postmap /etc/postfix/havedane_transport)
{transport}
"""

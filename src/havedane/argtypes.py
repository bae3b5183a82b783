"""Argument types of the `havedane` command line: what cannot work is refused while
parsing, in one line naming the option (exit 2), before anything is read or written."""

from __future__ import annotations

import argparse
import ipaddress
import re
import typing
from pathlib import Path

from havedane import config_keys


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), like every other error of the command."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def domain_arg(value: str) -> str:
    try:
        return config_keys.domain_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value!r}")
    return int(value)


def ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an IP address, got {value!r}") from None


def resolver(value: str) -> str:
    """A resolver: `IP`, `IP:PORT` or `[IPv6]:PORT`, written back as check.py reads it."""
    address, port_text = split_resolver(value)
    try:
        address = ip(address)
        port(port_text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be IP or IP:PORT, got {value!r}") from None
    return f"[{address}]:{port_text}" if ":" in address else f"{address}:{port_text}"


def split_resolver(value: str) -> tuple[str, str]:
    """("192.0.2.1", "53") from "192.0.2.1"; the port after the last colon of an IPv4
    address or of a bracketed IPv6 one; a bare IPv6 address has port 53."""
    if value.startswith("["):
        address, _, rest = value[1:].partition("]")
        return address, rest[1:] if rest.startswith(":") else rest or "53"
    if value.count(":") == 1:
        address, _, port_text = value.partition(":")
        return address, port_text
    return value, "53"


def client_address(value: str) -> str:
    """Postfix's ${client_address}: an address, or "unknown"."""
    return value if value == "unknown" else ip(value)


def user(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", value):  # POSIX portable user names
        raise argparse.ArgumentTypeError(f"must be a user name like havedane, got {value!r}")
    return value


def output_file(value: str) -> str:
    """A file to write: not a directory, in a directory that exists."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory: give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent} does not exist (create it first)")
    return value


def listen(value: str) -> config_keys.Listen:
    """ADDRESS:PORT, as in [smtp] listen and [web] listen."""
    try:
        return config_keys.parse_listen(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def seconds(value: str) -> float:
    """A positive duration in seconds (e.g. `probe --timeout`)."""
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value!r}")
    return number

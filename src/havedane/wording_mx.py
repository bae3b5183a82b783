"""Why a probe with an MX host to skip (mx-fallback) got its grade: the clauses that
name the MX hosts. Apart from havedane.wording so that each stays one small module."""

from __future__ import annotations

from havedane.probes import Probe
from havedane.verdict import Reason


def reason(why: Reason, probe: Probe, domain: str) -> str | None:
    """The clause for the reasons about MX hosts (lower case, no final stop); None for any other."""
    first, second = probe.first_mx_host(domain), probe.mx_host(domain)
    match why:
        case Reason.FIRST_MX:
            return f"delivered through {first}, whose certificate does not match its TLSA records"
        case Reason.WHICH_MX:
            return (
                f"delivered, but your server named no MX host in SNI, so whether the mail went through {first} "
                f"(which it must skip) or {second} is unknown"
            )
        case Reason.NO_FALLBACK:
            return f"connected to {first}, left it as it must, but never delivered through {second}"
    return None

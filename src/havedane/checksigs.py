"""`havedane check`'s look at the zone's signatures: when do they expire?

A signature is valid only until its expiration time (RFC 4034 §3.1.5); a validator
checks it (RFC 4035 §5.3.1) and, past it, the zone turns bogus: every DANE lookup under
it fails and every sender defers (RFC 7672 §2.2). `havedane zone --sign` signs for 30
days (havedane.dns.sign.LIFETIME) and deploy/havedane-resign.timer signs again daily;
this check notices when that stopped, a week before it matters.

The RRSIGs are asked for with CD (checking disabled, RFC 4035 §3.2.2), so that the
resolver hands them over even once they expired and it would otherwise answer SERVFAIL.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from havedane import argtypes

# Warn this long before the first signature expires: a week, so that a daily re-signing
# that stopped is noticed by a weekly check, with days left to mend it.
WARN_BEFORE = datetime.timedelta(days=7)
RRSETS = ("SOA", "DNSKEY")  # signed at the apex by every signing run, as every other RRset


def expirations(resolver: str, zone: str, timeout: float = 5.0) -> tuple[list[datetime.datetime], str | None]:
    """The expiration times of the RRSIGs over the zone's apex RRsets, as the resolver
    hands them over with CD set; and the error, if it did not answer."""
    address, port = argtypes.split_resolver(resolver)
    found: list[datetime.datetime] = []
    for rdtype in RRSETS:
        msg = dns.message.make_query(zone, rdtype, want_dnssec=True)
        msg.flags |= dns.flags.CD
        try:
            resp, _ = dns.query.udp_with_fallback(msg, address, timeout=timeout, port=int(port))
        except (dns.exception.DNSException, OSError) as e:
            return found, f"{type(e).__name__}: {e}"
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                found += [datetime.datetime.fromtimestamp(rd.expiration, datetime.UTC) for rd in rrset]
    return found, None


def verdict(expires: Iterable[datetime.datetime], now: datetime.datetime) -> tuple[str, str]:
    """("ok" | "warn" | "fail", what to say): the first expiration decides."""
    first = min(expires, default=None)
    if first is None:
        return "fail", "no signatures (RRSIG) over the SOA and DNSKEY"
    when = first.strftime("%Y-%m-%d %H:%M UTC")
    left = first - now
    if left <= datetime.timedelta(0):
        return "fail", f"a signature expired at {when}: the zone is bogus to every validator"
    days = left.total_seconds() / 86400
    said = f"the first signature expires at {when}, in {days:.1f} days"
    return ("warn" if left < WARN_BEFORE else "ok"), said

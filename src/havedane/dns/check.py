"""`havedane check`: the live deployment, seen from outside.

Through a validating resolver: every name answers with the AD bit (RFC 4035
§3.2.3); `do`'s TLSA matches the chain the receiver actually serves and `wrong`'s
does not (connect, STARTTLS with SNI, compare SPKI digests, RFC 7672 §3.1);
`dont` has an authenticated denial of TLSA (RFC 7672 §2.2); every probe host
accepts SMTP and offers STARTTLS; the web URL answers. One line per check.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from cryptography import x509

from havedane import probes
from havedane.config import Config
from havedane.dns import tlsa


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text}\n      fix: {self.fix}"


@dataclass(frozen=True)
class Answer:
    rcode: int
    ad: bool
    records: list[str]
    error: str | None = None


def query(resolver: str, name: str, rdtype: str, timeout: float = 5.0) -> Answer:
    """One query with DO and AD set (RFC 6840 §5.7), over UDP with TCP fallback."""
    msg = dns.message.make_query(name, rdtype, want_dnssec=True)
    msg.flags |= dns.flags.AD
    try:
        resp, _ = dns.query.udp_with_fallback(msg, resolver, timeout=timeout)
    except (dns.exception.DNSException, OSError) as e:
        return Answer(-1, False, [], f"{type(e).__name__}: {e}")
    want = dns.rdatatype.from_text(rdtype)
    records = [rd.to_text() for rrset in resp.answer if rrset.rdtype == want for rd in rrset]
    return Answer(resp.rcode(), bool(resp.flags & dns.flags.AD), records)


def served_chain(address: str, port: int, sni: str, timeout: float = 10.0) -> tuple[list[x509.Certificate], str]:
    """Connect, EHLO, STARTTLS with SNI; the chain the receiver sent, and its banner."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we compare with TLSA ourselves; PKIX does not apply (RFC 7672 §3.1)
    with smtplib.SMTP(address, port, timeout=timeout, local_hostname="havedane-check.invalid") as smtp:
        banner = smtp.ehlo_resp.decode(errors="replace") if smtp.ehlo_resp else ""
        smtp.ehlo()
        if not smtp.has_extn("starttls"):
            raise ConnectionError("STARTTLS not offered")
        smtp._host = sni  # type: ignore[attr-defined]  # smtplib sends it as SNI
        smtp.starttls(context=ctx)
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        chain = sock._sslobj.get_unverified_chain()  # type: ignore[attr-defined]  # public in 3.13
        der = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]
        return [x509.load_der_x509_certificate(c.public_bytes(der)) for c in chain], banner


def check(config: Config, resolver: str, smtp_port: int = 25) -> Iterator[Result]:
    domain = config.domain
    soa = query(resolver, domain, "SOA")
    yield authenticated(
        f"DNSSEC {domain}", soa, "sign the zone (`havedane zone --sign`) and publish its DS at the parent"
    )
    for probe in config.probes:
        host = probe.host(domain)
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            ans = query(resolver, host, rdtype)
            addresses += ans.records
            if ans.records:
                yield authenticated(f"{rdtype} {host}", ans, "the answer must be signed (DNSSEC) for DANE to apply")
        if not addresses:
            yield Result(f"A/AAAA {host}", False, "no address", f"publish A/AAAA for {host} (`havedane records`)")
            continue
        mx = query(resolver, host, "MX")
        yield authenticated(f"MX {host}", mx, f"publish `{host}. MX 10 {host}.` (signed)", need_records=True)
        yield from check_tlsa(probe, host, addresses[0], resolver, smtp_port)
    yield check_web(config.public_url)


def authenticated(name: str, ans: Answer, fix: str, need_records: bool = False) -> Result:
    if ans.error:
        return Result(name, False, f"no answer ({ans.error})", "check the resolver address and that it validates")
    if ans.rcode != dns.rcode.NOERROR:
        return Result(name, False, f"rcode {dns.rcode.to_text(dns.rcode.Rcode(ans.rcode))}", fix)
    if need_records and not ans.records:
        return Result(name, False, "no records", fix)
    if not ans.ad:
        return Result(name, False, "answer not authenticated (no AD bit)", fix)
    return Result(name, True, ", ".join(ans.records[:3]) + " (AD)" if ans.records else "authenticated (AD)")


def check_tlsa(probe: probes.Probe, host: str, address: str, resolver: str, port: int) -> Iterator[Result]:
    name = f"_25._tcp.{host}"
    ans = query(resolver, name, "TLSA")
    records = [parse_tlsa(r) for r in ans.records]
    if probe.tlsa is probes.Tlsa.NONE:
        denial = ans.rcode in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR) and not records
        if ans.error or not denial:
            yield Result(f"TLSA {name}", False, ans.error or "TLSA present", f"{host} must publish no TLSA")
        elif not ans.ad:
            yield Result(f"TLSA {name}", False, "denial of existence not authenticated", "sign the zone (NSEC)")
        else:
            yield Result(f"TLSA {name}", True, "none, authenticated denial (AD)")
    else:
        yield authenticated(f"TLSA {name}", ans, f"publish the TLSA records for {host} (`havedane records`)", True)
    try:
        chain, _ = served_chain(address, port, host)
    except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
        yield Result(f"SMTP {host} [{address}]:{port}", False, f"{type(e).__name__}: {e}",
                     "start `havedane serve` (or Postfix with the bridge) and open port 25")  # fmt: skip
        return
    yield Result(f"SMTP {host} [{address}]:{port}", True, f"STARTTLS offered, chain of {len(chain)} certificate(s)")
    if not records:
        return
    matched = tlsa.matches(records, chain)
    if probe.tlsa is probes.Tlsa.MATCH:
        detail = "served chain matches" if matched else "no record matches the served chain"
        fix = "republish TLSA from the certificates served (`havedane records`), or serve the chain they came from"
        yield Result(f"TLSA matches {host}", matched, detail, fix)
    elif probe.tlsa is probes.Tlsa.MISMATCH:
        detail = "a record matches the served chain" if matched else "served chain does not match (as intended)"
        yield Result(
            f"TLSA mismatches {host}", not matched, detail, "publish the mismatching records (`havedane records`)"
        )


def parse_tlsa(text: str) -> tlsa.TlsaRecord:
    usage, selector, mtype, data = text.split(" ", 3)
    return tlsa.TlsaRecord(int(usage), int(selector), int(mtype), bytes.fromhex(data.replace(" ", "")))


def check_web(url: str) -> Result:
    try:
        with urllib.request.urlopen(url + "/", timeout=10) as resp:
            return Result(f"web {url}", resp.status == 200, f"HTTP {resp.status}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return Result(
            f"web {url}", False, str(getattr(e, "reason", e)), "start `havedane serve` and check [web] public_url"
        )


def system_resolver() -> str:
    """The first nameserver of /etc/resolv.conf."""
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    socket.inet_pton(socket.AF_INET6 if ":" in parts[1] else socket.AF_INET, parts[1])
                    return parts[1]
    except OSError:
        pass
    return "127.0.0.1"

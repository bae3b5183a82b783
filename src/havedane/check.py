"""`havedane check`: the live deployment, seen from outside.

Through a validating resolver: every name answers with the AD bit (RFC 4035
§3.2.3), at a fresh test host under each probe (the wildcard records answer it, as
they answer a new test's); `do`'s TLSA matches the chain the receiver actually serves and `wrong`'s
does not (connect, STARTTLS with SNI, compare SPKI digests, RFC 7672 §3.1);
`dont` has an authenticated denial of TLSA (RFC 7672 §2.2); every TLSA RRset has the
usages, selectors and matching types of its probe's shape; `ta-full`'s server sends its
leaf without the CA (RFC 7671 §5.2.2); in `mixed-ee`/`mixed-ta` only one usage's records
match; every probe accepts SMTP and offers STARTTLS (or, where it must not, does not);
the web URL answers. One line per check.
"""

from __future__ import annotations

import datetime
import secrets
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from cryptography import x509

from havedane import argtypes, checksigs, probes
from havedane.config import Config
from havedane.dns import tlsa, zone
from havedane.store.base import CHECK_HELO


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False  # passes, but needs doing soon (a signature about to expire)

    def line(self) -> str:
        label = "WARN" if self.warn else "ok  " if self.ok else "FAIL"
        text = f"{label}  {self.name}: {self.detail}"
        return text if (self.ok and not self.warn) or not self.fix else f"{text}\n      fix: {self.fix}"


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
    address, port = argtypes.split_resolver(resolver)
    try:
        resp, _ = dns.query.udp_with_fallback(msg, address, timeout=timeout, port=int(port))
    except (dns.exception.DNSException, OSError) as e:
        return Answer(-1, False, [], f"{type(e).__name__}: {e}")
    want = dns.rdatatype.from_text(rdtype)
    records = [rd.to_text() for rrset in resp.answer if rrset.rdtype == want for rd in rrset]
    return Answer(resp.rcode(), bool(resp.flags & dns.flags.AD), records)


def served_chain(address: str, port: int, sni: str, timeout: float = 10.0) -> list[x509.Certificate]:
    """Connect, EHLO, STARTTLS with SNI; the chain the receiver sent."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we compare with TLSA ourselves; PKIX does not apply (RFC 7672 §3.1)
    with smtplib.SMTP(address, port, timeout=timeout, local_hostname=CHECK_HELO) as smtp:
        smtp.ehlo()
        if not smtp.has_extn("starttls"):
            raise ConnectionError("STARTTLS not offered")
        smtp._host = sni  # type: ignore[attr-defined]  # smtplib sends it as SNI
        smtp.starttls(context=ctx)
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        chain = sock._sslobj.get_unverified_chain()  # type: ignore[attr-defined]  # public in 3.13
        der = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]
        return [x509.load_der_x509_certificate(c.public_bytes(der)) for c in chain]


def check(config: Config, resolver: str, smtp_port: int = 25) -> Iterator[Result]:
    domain = config.domain
    soa = query(resolver, domain, "SOA")
    if soa.error:
        # No answer at all: every other question would time out alike and blame the zone.
        fix = "give a validating resolver that answers (--resolver IP[:PORT])"
        yield Result(f"resolver {resolver}", False, f"does not answer ({soa.error}); nothing else checked", fix)
        return
    yield authenticated(
        f"DNSSEC {domain}", soa, "sign the zone (`havedane zone --sign`) and publish its DS at the parent"
    )
    yield from check_signatures(config, resolver)
    for probe in config.probes:
        yield from check_probe(config, probe, resolver, smtp_port)
    yield check_web(config.public_url)


def check_signatures(config: Config, resolver: str, now: datetime.datetime | None = None) -> Iterator[Result]:
    """Each zone havedane signs: its first signature expires more than a week from now."""
    now = now or datetime.datetime.now(datetime.UTC)
    fix = "sign again (`havedane zone --sign`, daily by deploy/havedane-resign.timer) and reload the name server"
    for name in zone.signed_zones(config.domain, config.probes):
        found, error = checksigs.expirations(resolver, name)
        if error:
            yield Result(f"signatures {name}", False, f"no answer ({error})", "check the resolver")
            continue
        state, said = checksigs.verdict(found, now)
        yield Result(f"signatures {name}", state != "fail", said, fix, warn=state == "warn")


def fresh_alias() -> str:
    """A name no test has (nor had): a test's host that no resolver has cached, so the
    wildcard answers it as it answers a new test's (the aliases' alphabet, probes.ALIAS)."""
    return "check" + secrets.token_hex(6)


def check_probe(config: Config, probe: probes.Probe, resolver: str, port: int) -> Iterator[Result]:
    """DNS and SMTP of one probe at a fresh test host, against the shape the catalogue gives it."""
    domain = config.domain
    alias = fresh_alias()
    host, tls_host = probe.host(domain, alias), probe.tls_host(domain, alias)
    signed = probe.zone is not probes.Zone.UNSIGNED  # an unsigned delegation is provably insecure on purpose
    if probe.zone is not probes.Zone.PARENT:
        served = check_child_zone(probe.zone_apex(domain), resolver)
        yield served
        if not served.ok:
            return  # every other answer from the zone would fail for this one reason
    yield from check_mx(probe, domain, host, resolver, signed)
    addresses: list[str] = []
    for rdtype in ("A", "AAAA"):
        ans = query(resolver, tls_host, rdtype)
        addresses += ans.records
        if ans.records:
            yield authenticated(f"{rdtype} {tls_host}", ans, "the answer must be signed (DNSSEC)", signed=signed)
    if not addresses:
        where = probe.mx_host(domain) or probe.wildcard(domain)
        yield Result(f"A/AAAA {tls_host}", False, "no address", f"publish A/AAAA at {where} (`havedane records`)")
        return
    own = config.probe_addresses.get(probe.name)
    if own and own not in addresses:
        yield Result(f"address {tls_host}", False, f"resolves to {', '.join(addresses)}, not {own}",
                     f"{tls_host} must point at its own listener address {own} ([probes] addresses)")  # fmt: skip
    records = yield from check_tlsa_rrset(probe, tls_host, resolver)
    if records and probe.zone is not probes.Zone.BOGUS:
        yield check_tlsa_shape(probe, tls_host, records)
    yield from check_smtp(probe, tls_host, own or addresses[0], port, records)
    first = probe.first_mx_host(domain)
    if first is not None:
        yield from check_first_mx(first, resolver, own or addresses[0], port)


def check_first_mx(host: str, resolver: str, address: str, port: int) -> Iterator[Result]:
    """The preferred MX host a DANE sender must skip (mx-fallback): signed TLSA that
    match nothing it serves, so that authentication fails there (RFC 7672 §2.2)."""
    name = f"_25._tcp.{host}"
    ans = query(resolver, name, "TLSA")
    yield authenticated(f"TLSA {name}", ans, "publish the records of `havedane records`", need_records=True)
    try:
        chain = served_chain(address, port, host)
    except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
        yield Result(f"SMTP {host} [{address}]:{port}", False, f"{type(e).__name__}: {e}", "start `havedane serve`")
        return
    matched = tlsa.matches([parse_tlsa(r) for r in ans.records], chain)
    detail = "a record matches the served chain" if matched else "served chain does not match (as intended)"
    yield Result(f"TLSA mismatches {host}", not matched, detail, "publish the records of `havedane records`")


def check_tlsa_shape(probe: probes.Probe, tls_host: str, records: list[tlsa.TlsaRecord]) -> Result:
    """The TLSA RRset has the usages, selectors and matching types of the probe's shape
    (e.g. `ta-full`: only 2 1 0, the CA's whole public key, RFC 7671 §5.2.2)."""
    want = tlsa.PARAMS.get(probe.tlsa, frozenset())
    got = frozenset((r.usage, r.selector, r.mtype) for r in records)
    said = _params(got) if got == want else f"{_params(got)}, expected {_params(want)}"
    return Result(f"TLSA shape {tls_host}", got == want, said, "publish the records of `havedane records`, only those")


def _params(params: frozenset[tuple[int, int, int]]) -> str:
    """'3 1 1, 2 1 1': the usage, selector and matching type of each record, highest first."""
    return ", ".join(" ".join(map(str, p)) for p in sorted(params, reverse=True)) or "none"


def check_mx(probe: probes.Probe, domain: str, host: str, resolver: str, signed: bool) -> Iterator[Result]:
    """A probe with an MX host: `*.<probe> MX` to it. Any other: no MX, authenticated
    (NODATA from the wildcard), so that senders use the host's own address (RFC 5321 §5.1)."""
    mx = query(resolver, host, "MX")
    if probe.mx_host(domain) is not None:
        want = [f"{pref} {mx_host}." for pref, mx_host in probe.mx_records(domain)]
        if sorted(mx.records) == want:
            yield authenticated(f"MX {host}", mx, "sign the zone", need_records=True, signed=signed)
        else:
            fix = f"publish `{probe.wildcard(domain)}. MX` {' and '.join(want)} (`havedane records`)"
            yield Result(f"MX {host}", False, f"got {mx.records or mx.error or 'nothing'}", fix)
        return
    if [r for r in mx.records if r != f"10 {host}."]:
        fix = f"publish no MX at {probe.wildcard(domain)} (`havedane records`)"
        yield Result(f"MX {host}", False, f"got {', '.join(mx.records)}: mail would go elsewhere", fix)
    elif not mx.records:
        fix = f"publish the wildcard records at {probe.wildcard(domain)} (`havedane records`)"
        yield authenticated(f"MX {host}", mx, fix, signed=signed, none="none: mail goes to the host's address")


def check_child_zone(apex: str, resolver: str) -> Result:
    """A probe's child zone (bogus, unsigned) answers its SOA: it is delegated and its
    name server has loaded it. A server that refused to load the zone (Knot validating
    a zone that has no keys: "no keys for signing") makes the resolver answer SERVFAIL
    for every name in it, which is the cause to name, not the first missing record."""
    ans = query(resolver, apex, "SOA")
    soa = ans.rcode == dns.rcode.NOERROR and bool(ans.records)
    if soa:
        return Result(f"zone {apex}", True, "served (SOA answered)")
    got = ans.error or (f"rcode {_rcode(ans)}" if ans.rcode != dns.rcode.NOERROR else "no SOA")
    fix = (
        f"serve the zone file {apex}.zone that `havedane zone` wrote, unchanged, on the name server the "
        f"delegation names; with Knot use `havedane zone --knot-conf` (it checks only the signed base zone on load) "
        f"and read Knot's log for the zone"
    )
    return Result(f"zone {apex}", False, f"not served: SOA query answered {got}", fix)


def check_tlsa_rrset(
    probe: probes.Probe, tls_host: str, resolver: str
) -> Generator[Result, None, list[tlsa.TlsaRecord]]:
    name = f"_25._tcp.{tls_host}"
    ans = query(resolver, name, "TLSA")
    records = [parse_tlsa(r) for r in ans.records]
    if probe.zone in (probes.Zone.BOGUS, probes.Zone.BOGUS_DENIAL):
        # The point of the probe: the TLSA signature (or that of the NSEC3 proving there
        # is no TLSA) does not validate (SERVFAIL), while the rest of the zone does (RFC
        # 7672 §2.2: a lookup error means defer).
        ok = ans.rcode == dns.rcode.SERVFAIL
        detail = "lookup fails validation (SERVFAIL), as intended" if ok else f"rcode {_rcode(ans)}, expected SERVFAIL"
        yield Result(f"TLSA {name}", ok, detail, "serve the child zone written by `havedane zone --sign` unchanged")
        return records
    if probe.tlsa is probes.Tlsa.NONE:
        denial = ans.rcode in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR) and not records
        if ans.error or not denial:
            yield Result(f"TLSA {name}", False, ans.error or "TLSA present", f"{tls_host} must publish no TLSA")
        elif not ans.ad:
            yield Result(f"TLSA {name}", False, "denial of existence not authenticated", "sign the zone (NSEC3)")
        else:
            yield Result(f"TLSA {name}", True, "none, authenticated denial (AD)")
        return records
    fix = f"publish the TLSA records for {tls_host} (`havedane records`)"
    yield authenticated(f"TLSA {name}", ans, fix, need_records=True, signed=probe.zone is probes.Zone.PARENT)
    return records


def check_smtp(
    probe: probes.Probe, tls_host: str, address: str, port: int, records: list[tlsa.TlsaRecord]
) -> Iterator[Result]:
    where = f"SMTP {tls_host} [{address}]:{port}"
    if not probe.starttls:
        try:
            offered = starttls_offered(address, port)
        except (OSError, smtplib.SMTPException) as e:
            yield Result(where, False, f"{type(e).__name__}: {e}", "start `havedane serve` with [probes] addresses")
            return
        detail = "STARTTLS offered, but this probe must not offer it" if offered else "no STARTTLS (as intended)"
        yield Result(where, not offered, detail, f"listen on {address} without TLS ([probes] addresses)")
        return
    try:
        chain = served_chain(address, port, tls_host)
    except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
        yield Result(where, False, f"{type(e).__name__}: {e}",
                     "start `havedane serve` (or Postfix with the bridge) and open port 25")  # fmt: skip
        return
    yield Result(where, True, f"STARTTLS offered, chain of {len(chain)} certificate(s) for SNI {tls_host}")
    if not records or probe.zone is probes.Zone.BOGUS or probe.tlsa is probes.Tlsa.UNUSABLE:
        return
    if probe.tlsa is probes.Tlsa.TA and probe.chain is None:
        # Under DANE-TA alone the leaf must name the host (RFC 7672 §3.2.2): a certificate
        # made before per-test hosts names `ta.<domain>`, not `*.ta.<domain>`.
        ok = names_host(chain[0], tls_host)
        fix = "remove the tls/chain-*.pem files, run `havedane init --add-missing`, republish `havedane records`"
        said = "the certificate names it" if ok else "the certificate does not name it"
        yield Result(f"name {tls_host}", ok, said, fix)
    yield from check_chain_shape(probe, tls_host, chain, records)
    matched = tlsa.matches(records, chain)
    if probe.tlsa is probes.Tlsa.MISMATCH:
        detail = "a record matches the served chain" if matched else "served chain does not match (as intended)"
        yield Result(f"TLSA mismatches {tls_host}", not matched, detail, "publish the records of `havedane records`")
    else:
        detail = "served chain matches" if matched else "no record matches the served chain"
        fix = "republish TLSA from the certificates served (`havedane records`), or serve the chain they came from"
        yield Result(f"TLSA matches {tls_host}", matched, detail, fix)


def check_chain_shape(
    probe: probes.Probe, tls_host: str, chain: list[x509.Certificate], records: list[tlsa.TlsaRecord]
) -> Iterator[Result]:
    """What the served chain must look like beside the records: no CA where the probe's
    chain is the leaf alone (RFC 7671 §5.2.2), and in a mixed set exactly the records of
    one usage matching (any one match must be enough, RFC 7672 §3.1)."""
    fix = "remove the tls/chain-*.pem files, run `havedane init --add-missing`, republish `havedane records`"
    if probe.chain is probes.Chain.LEAF_ONLY:
        ok = len(chain) == 1
        said = "the leaf alone, no CA (as intended)" if ok else f"{len(chain)} certificates: the CA must not be sent"
        yield Result(f"chain {tls_host}", ok, said, fix)
    usage = tlsa.MIXED.get(probe.tlsa)
    if usage is not None:
        # One 3 1 1 per leaf kind is published; the chain served here has one leaf.
        ok = {r.usage for r in records if tlsa.matching(r, chain)} == {usage}
        said = (
            f"only the usage {usage} records match (as intended)" if ok else f"not only the usage {usage} records match"
        )
        yield Result(f"TLSA mixed {tls_host}", ok, said, "publish the records of `havedane records`")


def names_host(cert: x509.Certificate, host: str) -> bool:
    """Whether a DNS name of the certificate matches `host`, a wildcard covering one
    label (RFC 6125 §6.4.3)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    host = host.lower().rstrip(".")
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower()
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


def starttls_offered(address: str, port: int, timeout: float = 10.0) -> bool:
    with smtplib.SMTP(address, port, timeout=timeout, local_hostname=CHECK_HELO) as smtp:
        smtp.ehlo()
        return smtp.has_extn("starttls")


def _rcode(ans: Answer) -> str:
    return ans.error or dns.rcode.to_text(dns.rcode.Rcode(ans.rcode))


def authenticated(
    name: str, ans: Answer, fix: str, need_records: bool = False, signed: bool = True, none: str = ""
) -> Result:
    if ans.error:
        return Result(name, False, f"no answer ({ans.error})", "check the resolver address and that it validates")
    if ans.rcode != dns.rcode.NOERROR:
        return Result(name, False, f"rcode {_rcode(ans)}", fix)
    if need_records and not ans.records:
        return Result(name, False, "no records", fix)
    shown = ", ".join(ans.records[:3]) or none or "none"
    if not signed:
        # The unsigned probe: an answer without AD is the point (RFC 4035 §4.3, insecure).
        if ans.ad:
            return Result(name, False, "authenticated (AD), but this name must be provably insecure",
                          "delegate the child zone without DS")  # fmt: skip
        return Result(name, True, f"{shown} (insecure, as intended)")
    if not ans.ad:
        return Result(name, False, "answer not authenticated (no AD bit)", fix)
    return Result(name, True, f"{shown} (AD)" if ans.records else f"{none or 'none'}, authenticated (AD)")


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

"""The dnstap reader without Knot: tying a query to its test by the alias in its name,
pairing queries with responses, and a real reader on a unix socket fed malformed
frames by a hand-written Frame Streams sender (what Knot does is in test_dnstap_knot)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import fstrm
import pytest
from dnstap_pb import dnstap_pb2

from havedane import cli, probes
from havedane.dns.queries import DnsQuery, alias_of, probe_hosts
from havedane.dnstap import CONTENT_TYPE, Reader
from havedane.dnstap_decode import Pairer, decode
from helpers import make_setup

DOMAIN = "x.test"
HOSTS = probe_hosts(DOMAIN, tuple(probes.CATALOGUE.values()))
ALIAS = "k7q2m9x4c1v8b3n6"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("qname", "alias"),
    [
        (f"_25._tcp.{ALIAS}.do.x.test", ALIAS),
        (f"_25._tcp.{ALIAS}.DO.X.TEST.", ALIAS),  # case and the final dot do not matter (RFC 4343)
        (f"_tcp.{ALIAS}.wrong.x.test", ALIAS),  # query-name minimisation steps (RFC 9156)
        (f"{ALIAS}.dont.x.test", ALIAS),
        (f"_25._tcp.{ALIAS}.mxhost.x.test", ALIAS),  # the `mx` probe's separate TLS host
        (f"_25._tcp.{ALIAS}.bogus.x.test", ALIAS),  # a probe in a child zone
        ("x.test", None),  # DNSKEY, SOA of the zone
        ("do.x.test", None),  # a probe host itself
        ("_25._tcp.do.x.test", None),  # the probe's own TLSA (no alias in it)
        ("_tcp.do.x.test", None),
        ("ns.x.test", None),
        ("a.b.nosuchprobe.x.test", None),  # not below a probe host
        (f"_25._tcp.{ALIAS}.do.x.test.evil.example", None),
        ("_25._tcp.not_an_alias.do.x.test", None),  # not the alias alphabet
    ],
)
def test_a_query_is_tied_to_its_test_by_the_label_right_below_a_probe_host(qname: str, alias: str | None) -> None:
    assert alias_of(qname, HOSTS) == alias


def tap(kind: int, wire: bytes, qid: int = 0, port: int = 5300, **kw: object) -> bytes:
    msg = dnstap_pb2.Message(
        type=kind, socket_family=dnstap_pb2.INET, socket_protocol=dnstap_pb2.UDP,
        query_address=bytes([198, 51, 100, 53]), response_address=bytes([192, 0, 2, 53]),
        query_port=port, response_port=53, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    if kind == dnstap_pb2.Message.AUTH_QUERY:
        msg.query_message, msg.query_time_sec, msg.query_time_nsec = wire, 1_700_000_000, 500_000_000
    else:
        msg.response_message, msg.response_time_sec = wire, 1_700_000_001
    return dnstap_pb2.Dnstap(type=dnstap_pb2.Dnstap.MESSAGE, message=msg).SerializeToString()  # type: ignore[no-any-return]


def query_and_response(name: str, rdtype: str, qid: int, rcode: int = dns.rcode.NOERROR) -> tuple[bytes, bytes]:
    q = dns.message.make_query(name, rdtype, want_dnssec=True)
    q.id = qid
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    return tap(dnstap_pb2.Message.AUTH_QUERY, q.to_wire()), tap(dnstap_pb2.Message.AUTH_RESPONSE, r.to_wire())


def test_a_query_and_its_response_make_one_row_with_the_query_time_and_the_response_code() -> None:
    q, r = query_and_response(f"_25._tcp.{ALIAS}.do.x.test", "TLSA", 7, dns.rcode.NXDOMAIN)
    other_q, _ = query_and_response("x.test", "DNSKEY", 8)
    pairer = Pairer(wait=3)
    dq, dr, do = decode(q), decode(r), decode(other_q)
    assert dq is not None and dr is not None and do is not None
    assert pairer.add(dq, now=0) == [] and pairer.add(do, now=0.1) == []
    [paired] = pairer.add(dr, now=0.2)
    assert paired == DnsQuery(
        time=1_700_000_000.5, resolver="198.51.100.53", transport="udp", qname=f"_25._tcp.{ALIAS}.do.x.test",
        qtype="TLSA", dnssec_ok=True, rcode="NXDOMAIN", server="192.0.2.53",
    )  # fmt: skip
    # The query never answered is stored without a code once PAIR_WAIT has passed, not before.
    assert pairer.expire(now=2.0) == []
    [alone] = pairer.expire(now=3.2)
    assert (alone.qname, alone.qtype, alone.rcode) == ("x.test", "DNSKEY", None)
    # A response whose query was not logged stands alone.
    [only] = pairer.add(dr, now=4)
    assert (only.rcode, only.time) == ("NXDOMAIN", 1_700_000_001.0)


class Sender:
    """A Frame Streams sender in bidirectional mode, as Knot's mod-dnstap is."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.codec = reader, writer, fstrm.FstrmCodec()

    @classmethod
    async def connect(cls, path: Path) -> Sender:
        return cls(*await asyncio.open_unix_connection(str(path)))

    async def control(self) -> tuple[int, list[bytes]]:
        while not self.codec.process():
            chunk = await asyncio.wait_for(self.reader.read(4096), 5)
            assert chunk, "the reader closed the connection"
            self.codec.append(chunk)
        kind, types, _ = self.codec.decode()
        return kind, types

    async def handshake(self) -> None:
        self.writer.write(self.codec.encode_ctrlready(CONTENT_TYPE))
        assert await self.control() == (fstrm.FSTRM_CONTROL_ACCEPT, [CONTENT_TYPE])
        self.writer.write(self.codec.encode_ctrlstart(CONTENT_TYPE))

    def data(self, payload: bytes) -> None:
        self.writer.write(self.codec.encode_data(payload))

    async def stop(self) -> None:
        self.writer.write(self.codec.encode(ctrl=fstrm.FSTRM_CONTROL_STOP))
        assert await self.control() == (fstrm.FSTRM_CONTROL_FINISH, [])
        self.writer.close()


async def test_malformed_frames_are_counted_and_the_reader_goes_on(tmp_path: Path) -> None:
    batches: list[list[DnsQuery]] = []

    async def sink(batch: list[DnsQuery]) -> int:
        batches.append(batch)
        return len(batch)

    reader = Reader(tmp_path / "t.sock", DOMAIN, HOSTS, sink)
    await reader.start()
    try:
        first = await Sender.connect(tmp_path / "t.sock")
        await first.handshake()
        # A second connection at the same time (`knotc reload` opens one before closing the old).
        second = await Sender.connect(tmp_path / "t.sock")
        await second.handshake()
        q, r = query_and_response(f"_25._tcp.{ALIAS}.do.x.test", "TLSA", 9)
        first.data(b"\xff\x00 not a protobuf")
        first.data(tap(dnstap_pb2.Message.AUTH_QUERY, b"\x00\x01"))  # DNS wire bytes too short
        first.data(tap(dnstap_pb2.Message.AUTH_QUERY, b""))  # no DNS message at all
        first.data(dnstap_pb2.Dnstap(type=dnstap_pb2.Dnstap.MESSAGE).SerializeToString())  # no message
        first.data(q)
        first.data(r)
        second.data(query_and_response(f"{ALIAS}.dont.x.test", "A", 11)[1])  # read too
        await first.stop()
        await second.stop()
        # Broken framing (a frame far too large) closes that connection only.
        broken = await Sender.connect(tmp_path / "t.sock")
        await broken.handshake()
        broken.writer.write(struct.pack("!I", 1 << 30))
        assert await asyncio.wait_for(broken.reader.read(), 5) == b""
        # A peer that does not speak dnstap is refused at READY.
        stranger = await Sender.connect(tmp_path / "t.sock")
        stranger.writer.write(stranger.codec.encode_ctrlready(b"protobuf:something.Else"))
        assert await asyncio.wait_for(stranger.reader.read(), 5) == b""
        third = await Sender.connect(tmp_path / "t.sock")
        await third.handshake()
        third.data(query_and_response("x.test", "DNSKEY", 10)[1])
        await third.stop()
        await asyncio.sleep(0.5)
    finally:
        await reader.stop()
    stored = [q for b in batches for q in b]
    assert sorted((q.qname, q.qtype, q.rcode) for q in stored) == [
        (f"_25._tcp.{ALIAS}.do.x.test", "TLSA", "NOERROR"),  # query and response: one row
        (f"{ALIAS}.dont.x.test", "A", "NOERROR"),
        ("x.test", "DNSKEY", "NOERROR"),
    ]
    assert reader.counts.malformed == 6  # 4 data frames, the oversized frame, the foreign READY
    assert reader.counts.connections == 5
    assert not (tmp_path / "t.sock").exists()


def test_serve_role_dns_without_a_socket_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_setup(tmp_path)
    assert cli.main(["serve", "--config", str(config), "--role", "dns"]) == 2
    err = capsys.readouterr().err
    assert err == "havedane: serve --role dns needs [dns] dnstap_socket (the socket Knot's mod-dnstap writes to)\n"

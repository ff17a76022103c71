"""A real DNS server on loopback for tests: UDP and TCP on one free port, in the test's loop.

Tests set the records they need and point the relay at ``stub.nameserver``
(``RELAY_DNS_NAMESERVERS=127.0.0.1:<port>``)::

    stub.txt("sel._domainkey.example.com", "v=DKIM1; k=rsa; p=" + key)   # split at 255 bytes
    stub.cname("mail.example.com", "relay.test")
    stub.a("relay.test", "127.0.0.1")
    stub.mx("example.com", 10, "mx.example.com")
    stub.publish(res["DNSRecords"])   # a domain's whole record set, as the API returned it

Unknown names answer NXDOMAIN; a known name without the asked type answers NOERROR with no
answer (NODATA); a CNAME is followed inside the stub like a recursive resolver would.
``servfail(name)`` and ``drop(name)`` make a name fail (SERVFAIL) or time out (no reply).
Messages are parsed and rendered by dnspython; UDP answers honour the query's payload size
(512 without EDNS, RFC 1035 4.2.1) and set TC when larger, so clients retry over TCP
(RFC 7766), which the stub also serves (2-byte length prefix, RFC 1035 4.2.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

IN = dns.rdataclass.IN
_MAX_CNAME_CHAIN = 8


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


def split_txt(value: str | bytes) -> list[bytes]:
    """A TXT value as character-strings of at most 255 bytes (RFC 1035 3.3.14)."""
    data = value.encode() if isinstance(value, str) else value
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


@dataclass
class Query:
    name: str  # lower case, no trailing dot
    rdtype: str  # "TXT", "CNAME", ...
    transport: str  # "udp" | "tcp"


@dataclass
class DnsStub:
    host: str = "127.0.0.1"
    port: int = 0
    ttl: int = 60
    # Every UDP answer truncated (TC=1): forces clients onto TCP.
    tcp_only: bool = False
    queries: list[Query] = field(default_factory=list)
    _records: dict[tuple[str, dns.rdatatype.RdataType], list[dns.rdata.Rdata]] = field(
        default_factory=dict
    )
    _servfail: set[str] = field(default_factory=set)
    _drop: set[str] = field(default_factory=set)
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None
    _tcp_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # -- records ------------------------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """The value for RELAY_DNS_NAMESERVERS / settings.dns.nameservers."""
        return f"{self.host}:{self.port}"

    def add(self, name: str, rdata: dns.rdata.Rdata) -> None:
        self._records.setdefault((_key(name), rdata.rdtype), []).append(rdata)

    def txt(self, name: str, *values: str | bytes | list[str | bytes]) -> None:
        """One TXT record per value. A str/bytes value longer than 255 bytes is split into
        several character-strings; a list value gives the character-strings explicitly."""
        for value in values:
            if isinstance(value, list):
                strings = [v.encode() if isinstance(v, str) else v for v in value]
            else:
                strings = split_txt(value)
            self.add(name, TXT(IN, dns.rdatatype.TXT, strings))

    def cname(self, name: str, target: str) -> None:
        self.add(name, CNAME(IN, dns.rdatatype.CNAME, dns.name.from_text(target)))

    def a(self, name: str, *addresses: str) -> None:
        for address in addresses:
            self.add(name, A(IN, dns.rdatatype.A, address))

    def aaaa(self, name: str, *addresses: str) -> None:
        for address in addresses:
            self.add(name, AAAA(IN, dns.rdatatype.AAAA, address))

    def mx(self, name: str, preference: int, exchange: str) -> None:
        self.add(name, MX(IN, dns.rdatatype.MX, preference, dns.name.from_text(exchange)))

    def publish(self, records: dict[str, list[Any]], *, advisory: bool = False) -> None:
        """Publish a relay record set (``{host: [type, value, ...]}``, as the API returns it)
        the way a customer would; the advisory ``_dmarc.`` record only if asked."""
        for host, (rtype, value, *_flag) in records.items():
            if host.startswith("_dmarc.") and not advisory:
                continue
            kind = str(rtype).upper()
            if kind == "TXT":
                self.txt(host, str(value))
            elif kind == "CNAME":
                self.cname(host, str(value))
            elif kind == "A":
                self.a(host, str(value))
            elif kind == "AAAA":
                self.aaaa(host, str(value))
            elif kind == "MX":
                preference, _, exchange = str(value).partition(" ")
                self.mx(host, int(preference), exchange)
            else:
                raise ValueError(f"unsupported record type {rtype!r}")

    def remove(self, name: str, rdtype: str | None = None) -> None:
        key = _key(name)
        for k in [k for k in self._records if k[0] == key]:
            if rdtype is None or k[1] == dns.rdatatype.from_text(rdtype):
                del self._records[k]
        self._servfail.discard(key)
        self._drop.discard(key)

    def clear(self) -> None:
        self._records.clear()
        self._servfail.clear()
        self._drop.clear()
        self.queries.clear()

    def servfail(self, name: str) -> None:
        self._servfail.add(_key(name))

    def drop(self, name: str) -> None:
        """Never answer queries for this name (the client times out)."""
        self._drop.add(_key(name))

    def asked(self, name: str, rdtype: str | None = None) -> int:
        """How many queries for this name (and type) arrived."""
        key = name.lower().rstrip(".")
        return sum(1 for q in self.queries if q.name == key and rdtype in (None, q.rdtype))

    # -- answering ----------------------------------------------------------------------------

    def _names(self) -> set[str]:
        return {k[0] for k in self._records}

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to one query, or None to stay silent."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, rdtype = question.name, question.rdtype
        key = qname.to_text().lower()
        if key in self._drop:
            return None
        if key in self._servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        name = qname
        for _ in range(_MAX_CNAME_CHAIN):
            key = name.to_text().lower()
            found = self._records.get((key, rdtype))
            if found:
                response.answer.append(self._rrset(name, rdtype, found))
                return response
            aliases = self._records.get((key, dns.rdatatype.CNAME))
            if not aliases:
                break
            response.answer.append(self._rrset(name, dns.rdatatype.CNAME, aliases))
            name = aliases[0].target  # type: ignore[attr-defined]
        # RFC 6604 section 3: the RCODE describes the last name of the CNAME chain.
        if key not in self._names():
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def _rrset(
        self,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        rdatas: Iterable[dns.rdata.Rdata],
    ) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(name, IN, rdtype)
        for rd in rdatas:
            rrset.add(rd, self.ttl)
        return rrset

    def _handle(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if query.question:
            q = query.question[0]
            self.queries.append(
                Query(
                    q.name.to_text().lower().rstrip("."),
                    dns.rdatatype.to_text(q.rdtype),
                    transport,
                )
            )
        response = self.answer(query)
        if response is None:
            return None
        if transport == "tcp":
            return response.to_wire()
        limit = max(query.payload, 512) if query.edns >= 0 else 512
        try:
            if self.tcp_only:
                raise dns.exception.TooBig
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | dns.flags.RA
            return truncated.to_wire()

    # -- transports ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on the same free port (retrying if TCP's half is taken)."""
        loop = asyncio.get_running_loop()
        stub = self

        class _Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = stub._handle(data, "udp")
                if reply is not None:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        for _ in range(20):
            udp, _proto = await loop.create_datagram_endpoint(
                _Udp, local_addr=(self.host, self.port)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                udp.close()
                if self.port:
                    raise
                continue
            self._udp = udp
            self.port = port
            return
        raise OSError("no free port for the DNS stub")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_tasks.add(task)
        try:
            while True:
                header = await reader.readexactly(2)
                (length,) = struct.unpack("!H", header)
                wire = await reader.readexactly(length)
                reply = self._handle(wire, "tcp")
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tcp_tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._tcp_tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()

    async def __aenter__(self) -> DnsStub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

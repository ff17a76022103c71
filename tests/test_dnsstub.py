"""The DNS stub answers like a real server: dnspython's resolver is the client."""

from __future__ import annotations

import dns.asyncquery
import dns.asyncresolver
import dns.message
import dns.nameserver
import dns.resolver
import pytest

from tests.dnsstub import DnsStub


def resolver_for(stub: DnsStub, *, edns: bool = False) -> dns.asyncresolver.Resolver:
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = [dns.nameserver.Do53Nameserver(stub.host, stub.port)]
    res.lifetime = 2.0
    if edns:
        res.use_edns(0, 0, 1232)
    return res


async def test_records_of_every_type(dns_stub: DnsStub) -> None:
    key = "A" * 600
    dns_stub.txt("sel._domainkey.Example.com", f"v=DKIM1; k=rsa; p={key}")
    dns_stub.cname("mail.example.com", "relay.test.")
    dns_stub.a("relay.test", "127.0.0.1", "127.0.0.2")
    dns_stub.mx("example.com", 10, "mx.example.com")
    res = resolver_for(dns_stub)

    txt = await res.resolve("sel._domainkey.example.com", "TXT")
    strings = txt.rrset[0].strings  # type: ignore[index]
    assert [len(s) for s in strings] == [255, 255, len(f"v=DKIM1; k=rsa; p={key}") - 510]
    assert b"".join(strings).decode() == f"v=DKIM1; k=rsa; p={key}"
    # Too big for 512 bytes without EDNS: answered with TC over UDP, then over TCP.
    assert [q.transport for q in dns_stub.queries] == ["udp", "tcp"]

    cname = await res.resolve("MAIL.example.com", "CNAME")
    assert cname.rrset[0].target.to_text() == "relay.test."  # type: ignore[index]
    a = await res.resolve("mail.example.com", "A")  # followed through the CNAME
    assert sorted(r.address for r in a) == ["127.0.0.1", "127.0.0.2"]
    mx = await res.resolve("example.com", "MX")
    assert [(r.preference, r.exchange.to_text()) for r in mx] == [(10, "mx.example.com.")]
    assert dns_stub.asked("example.com", "MX") == 1


async def test_nxdomain_nodata_servfail_and_silence(dns_stub: DnsStub) -> None:
    dns_stub.a("only-a.example.com", "127.0.0.1")
    dns_stub.servfail("broken.example.com")
    dns_stub.drop("silent.example.com")
    res = resolver_for(dns_stub)
    with pytest.raises(dns.resolver.NXDOMAIN):
        await res.resolve("unknown.example.com", "TXT")
    with pytest.raises(dns.resolver.NoAnswer):
        await res.resolve("only-a.example.com", "TXT")
    with pytest.raises(dns.resolver.NoNameservers):
        await res.resolve("broken.example.com", "TXT")
    res.lifetime = 0.3
    with pytest.raises(dns.resolver.LifetimeTimeout):
        await res.resolve("silent.example.com", "TXT")


async def test_edns_payload_avoids_tcp_and_tcp_only_forces_it(dns_stub: DnsStub) -> None:
    dns_stub.txt("big.example.com", "x" * 700)
    await resolver_for(dns_stub, edns=True).resolve("big.example.com", "TXT")
    assert [q.transport for q in dns_stub.queries] == ["udp"]
    dns_stub.queries.clear()
    dns_stub.tcp_only = True
    await resolver_for(dns_stub, edns=True).resolve("big.example.com", "TXT")
    assert [q.transport for q in dns_stub.queries] == ["udp", "tcp"]
    # Direct TCP query works too.
    reply = await dns.asyncquery.tcp(
        dns.message.make_query("big.example.com", "TXT"), dns_stub.host, port=dns_stub.port
    )
    assert b"".join(reply.answer[0][0].strings) == b"x" * 700


async def test_publish_a_record_set(dns_stub: DnsStub) -> None:
    dns_stub.publish(
        {
            "sel._domainkey.example.com": ["TXT", "v=DKIM1; k=rsa; p=" + "B" * 400, False],
            "mail.example.com": ["CNAME", "relay.test", True],
            "ip.example.com": ["A", "192.0.2.1"],
            "mx.example.com": ["MX", "10 mx.relay.test"],
            "_dmarc.example.com": ["TXT", "v=DMARC1; p=none", False],
        }
    )
    res = resolver_for(dns_stub)
    txt = await res.resolve("sel._domainkey.example.com", "TXT")
    assert b"".join(txt.rrset[0].strings).endswith(b"B" * 400)  # type: ignore[index]
    assert (await res.resolve("ip.example.com", "A")).rrset is not None
    assert (await res.resolve("mx.example.com", "MX")).rrset is not None
    with pytest.raises(dns.resolver.NXDOMAIN):  # advisory records only on request
        await res.resolve("_dmarc.example.com", "TXT")

"""relay.dns.verify: live lookups through the DNS stub, matching rules, caching, failures."""

from __future__ import annotations

import dataclasses

import pytest

from relay.config import DnsSettings
from relay.dns.records import sender_domain_records
from relay.dns.verify import (
    ERROR,
    NODATA,
    NXDOMAIN,
    OK,
    DnsChecker,
    Lookup,
    Outcome,
    matches,
    status_after,
    txt_matches,
    verify_records,
)
from tests.conftest import make_settings
from tests.dnsstub import DnsStub

KEY = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "x" * 350 + "IDAQAB"


def checker_for(stub: DnsStub, redis: object = None, **overrides: object) -> DnsChecker:
    values: dict[str, object] = {"nameservers": [stub.nameserver], "timeout": 1.0, **overrides}
    settings = dataclasses.replace(DnsSettings(), **values)  # type: ignore[arg-type]
    return DnsChecker(settings, redis)


def test_txt_rules() -> None:
    dkim = f"v=DKIM1; k=rsa; p={KEY}"
    # Whitespace inside p= is ignored (RFC 6376 3.6.1); other tags are the owner's business.
    assert txt_matches(dkim, [f"v=DKIM1; t=s; k=rsa; p={KEY[:100]} {KEY[100:]}"])
    assert txt_matches(dkim, [f"k=rsa;p={KEY}"])
    assert not txt_matches(dkim, [f"v=DKIM1; k=rsa; p={KEY[:-1]}"])
    assert not txt_matches(dkim, ["v=DKIM1; k=rsa; p="])  # revoked key
    spf = "v=spf1 include:relay.test ~all"
    assert txt_matches(
        spf, ["v=spf1 ip4:192.0.2.1 include:_spf.google.com include:RELAY.test -all"]
    )
    assert txt_matches(spf, ["google-site-verification=abc", "v=spf1 +include:relay.test ~all"])
    assert not txt_matches(spf, ["v=spf1 include:other.test ~all"])
    # Two SPF records are a permerror (RFC 7208 4.5): not verified.
    assert not txt_matches(spf, ["v=spf1 include:relay.test ~all", "v=spf1 -all"])
    assert not txt_matches(spf, ["v=spf10 include:relay.test"])
    dmarc = "v=DMARC1; p=none; rua=mailto:postmaster@example.com"
    assert txt_matches(dmarc, ["v=DMARC1; p=reject"])
    assert not txt_matches(dmarc, ["v=spf1 -all"])
    assert txt_matches("hello   world", ["hello world"])


def test_other_type_rules() -> None:
    assert matches("CNAME", "relay.test", Lookup(OK, ("Relay.Test.",)))
    assert not matches("CNAME", "relay.test", Lookup(OK, ("other.test.",)))
    assert matches("A", "192.0.2.1", Lookup(OK, ("192.0.2.9", "192.0.2.1")))
    assert matches("AAAA", "2001:db8::1", Lookup(OK, ("2001:db8:0::1",)))
    assert matches("MX", "10 mx.relay.test", Lookup(OK, ("20 MX.relay.test.",)))
    assert not matches("MX", "mx.relay.test", Lookup(OK, ("10 other.test.",)))
    for status in (NXDOMAIN, NODATA, ERROR):
        assert not matches("CNAME", "relay.test", Lookup(status))


async def test_lookups_of_every_type(dns_stub: DnsStub) -> None:
    dns_stub.txt("sel._domainkey.example.com", f"v=DKIM1; k=rsa; p={KEY}")  # > 255 bytes
    dns_stub.cname("mail.example.com", "relay.test.")
    dns_stub.a("relay.test", "192.0.2.1")
    dns_stub.mx("bounce.example.com", 10, "mx.relay.test")
    dns_stub.a("only-a.example.com", "192.0.2.2")
    c = checker_for(dns_stub)
    dkim = await c.lookup("sel._domainkey.example.com", "TXT")
    assert dkim == Lookup(OK, (f"v=DKIM1; k=rsa; p={KEY}",))
    assert await c.lookup("MAIL.example.com.", "cname") == Lookup(OK, ("relay.test.",))
    assert await c.lookup("relay.test", "A") == Lookup(OK, ("192.0.2.1",))
    assert await c.lookup("bounce.example.com", "MX") == Lookup(OK, ("10 mx.relay.test.",))
    assert await c.lookup("nothing.example.com", "TXT") == Lookup(NXDOMAIN)
    assert await c.lookup("only-a.example.com", "TXT") == Lookup(NODATA)


async def test_failures_are_answers_not_exceptions(dns_stub: DnsStub) -> None:
    dns_stub.servfail("broken.example.com")
    dns_stub.drop("silent.example.com")
    c = checker_for(dns_stub, timeout=0.3)
    assert await c.lookup("broken.example.com", "CNAME") == Lookup(ERROR)
    assert await c.lookup("silent.example.com", "CNAME") == Lookup(ERROR)
    assert not Lookup(ERROR).definitive and Lookup(NXDOMAIN).definitive
    # Nobody listening at all.
    dead = DnsChecker(dataclasses.replace(DnsSettings(), nameservers=["127.0.0.1:9"], timeout=0.3))
    assert (await dead.lookup("example.com", "TXT")).status == ERROR


async def test_answers_are_cached_in_process(dns_stub: DnsStub) -> None:
    dns_stub.cname("mail.example.com", "relay.test")
    c = checker_for(dns_stub)
    assert (await c.lookup("mail.example.com", "CNAME")).answers == ("relay.test.",)
    dns_stub.remove("mail.example.com")
    dns_stub.cname("mail.example.com", "elsewhere.test")
    # Same answer within cache_ttl, and the stub was asked once.
    assert (await c.lookup("mail.example.com", "CNAME")).answers == ("relay.test.",)
    assert dns_stub.asked("mail.example.com", "CNAME") == 1
    await c.forget([("mail.example.com", "CNAME")])
    assert (await c.lookup("mail.example.com", "CNAME")).answers == ("elsewhere.test.",)
    # cache_ttl 0: no caching at all.
    nocache = checker_for(dns_stub, cache_ttl=0.0)
    await nocache.lookup("mail.example.com", "CNAME")
    await nocache.lookup("mail.example.com", "CNAME")
    assert dns_stub.asked("mail.example.com", "CNAME") == 4


@pytest.mark.redis
async def test_answers_are_shared_through_redis(dns_stub: DnsStub, redis_url: str) -> None:
    import redis.asyncio as aioredis

    node_a = aioredis.from_url(redis_url, decode_responses=True)
    node_b = aioredis.from_url(redis_url, decode_responses=True)
    try:
        dns_stub.txt("example.com", "v=spf1 include:relay.test ~all")
        a, b = checker_for(dns_stub, node_a), checker_for(dns_stub, node_b)
        first = await a.lookup("example.com", "TXT")
        dns_stub.remove("example.com")
        # Node B gets node A's answer: one query for the whole cluster within the TTL.
        assert await b.lookup("example.com", "TXT") == first
        assert dns_stub.asked("example.com") == 1
        assert 0 < await node_a.ttl("relay:dns:TXT:example.com") <= 60
        await b.forget([("example.com", "TXT")])
        assert (await a.lookup("example.com", "TXT")).status == NXDOMAIN
    finally:
        await node_a.aclose()
        await node_b.aclose()


async def test_verify_records_and_status(dns_stub: DnsStub, tmp_path: object) -> None:
    settings = make_settings(tmp_path, RELAY_DNS_NAMESERVERS=dns_stub.nameserver)  # type: ignore[arg-type]
    records = sender_domain_records("example.com", {"CustomSubdomain": "sl"}, settings)
    assert list(records) == ["sl.example.com", "track-sl.example.com", "_dmarc.example.com"]
    assert records["sl.example.com"] == ["CNAME", "relay.test."]
    dns_stub.cname("sl.example.com", "relay.test")
    dns_stub.cname("track-sl.example.com", "wrong.test")
    c = DnsChecker(settings.dns)
    outcome = await verify_records(c, records)
    assert outcome.records == {
        "sl.example.com": ["CNAME", "relay.test.", True],
        "track-sl.example.com": ["CNAME", "relay.test.", False],
        "_dmarc.example.com": ["TXT", records["_dmarc.example.com"][1], False],
    }
    assert not outcome.all_required and outcome.definitive
    assert status_after("Approval Pending", outcome) == "Approval Pending"
    assert status_after("Enabled", outcome) == "Approval Pending"
    assert status_after("Disabled", outcome) == "Disabled"
    good = Outcome({}, all_required=True, definitive=True)
    assert status_after("Approval Pending", good) == "Enabled"
    # Only resolver errors: an Enabled domain is not demoted by a DNS outage.
    outage = Outcome({}, all_required=False, definitive=False)
    assert status_after("Enabled", outage) == "Enabled"
    assert status_after("Approval Pending", outage) == "Approval Pending"


def test_ip_targets_become_address_records(tmp_path: object) -> None:
    settings = make_settings(
        tmp_path,  # type: ignore[arg-type]
        RELAY_DNS_RETURN_PATH_TARGET="192.0.2.7",
        RELAY_DNS_TRACKING_TARGET="2001:db8::7",
    )
    records = sender_domain_records("example.com", {}, settings)
    assert records["mail.example.com"] == ["A", "192.0.2.7"]
    assert records["track-mail.example.com"] == ["AAAA", "2001:db8::7"]

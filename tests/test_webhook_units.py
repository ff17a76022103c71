"""Webhook delivery parts on their own: signature, payload, retry schedule, the send-time SSRF
checks (through the DNS stub), the batched writer, the settings."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import random
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from relay import config, retry
from relay.config import DnsSettings, WebhookSettings
from relay.webhooks import batcher, keys, payload
from relay.webhooks.resolver import AddressRefused, CheckedResolver, NoAddress
from relay.webhooks.sender import Sender
from relay.webhooks.urls import UrlRefused, check_webhook_url, parse_networks
from tests.conftest import make_settings

# The Standard Webhooks specification's own test vector (libraries/python/tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_specification_vector() -> None:
    secret = keys.secret_bytes(VECTOR_SECRET)
    assert keys.signature(secret, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE


def test_signature_with_our_keys_agrees_with_the_reference_library() -> None:
    key = "7F94D1EF4F798E4E1F306F06DC3DF317424D60C91B2C4DC7F11D13A8D1B1C5FC"
    # CONTRACT: a key not of the whsec_ form is used as its UTF-8 bytes.
    assert keys.secret_bytes(key) == key.encode()
    ts = 1_700_000_000
    ours = keys.signature(keys.secret_bytes(key), "msg_abc", ts, b'{"a":1}')
    reference = Webhook(key.encode()).sign(
        "msg_abc", dt.datetime.fromtimestamp(ts, dt.UTC), '{"a":1}'
    )
    assert ours == reference


def _delivery(**over: Any) -> payload.Delivery:
    values: dict[str, Any] = dict(
        id=1, webhook_id=2, msg_id="msg_x", event="bounced", attempts=0, created_at=0.0,
        user_id=3, domain_id=4, event_id=99, message_id="m-1", recipient="r@example.net",
        logged_at=1769885531.25, smtp_code=550, smtp_response="550 5.1.1 no such user",
        data='{"BounceCategory": "bad-mailbox", "server": "internal-name"}',
        header_from="App <app@example.com>", subject="Hi", message_id_header="<1@example.com>",
        url="https://hooks.example.net/x", domain="example.com",
    )  # fmt: skip
    values.update(over)
    return payload.Delivery(**values)


def test_payload_shape_and_stability() -> None:
    d = _delivery()
    body = payload.body(d)
    assert body == payload.body(_delivery())  # the same bytes on every attempt
    doc = json.loads(body)
    assert doc == {
        "type": "bounced",
        "timestamp": "2026-01-31T18:52:11.250Z",
        "data": {
            "EventID": 99,
            "MessageID": "m-1",
            "Recipient": "r@example.net",
            "DomainID": 4,
            "Domain": "example.com",
            "LoggedAt": 1769885531,
            "Message": {
                "Headers": {
                    "From": "App <app@example.com>",
                    "To": "r@example.net",
                    "Subject": "Hi",
                    "MessageID": "<1@example.com>",
                }
            },
            "SMTPCode": 550,
            "SMTPResponse": "550 5.1.1 no such user",
            "BounceCategory": "bad-mailbox",
        },
    }
    # Internal details of the event data are not published.
    assert b"internal-name" not in body
    opened = json.loads(payload.body(_delivery(event="opened", smtp_code=None, smtp_response=None)))
    assert "SMTPResponse" not in opened["data"]


def test_retry_schedule_first_within_a_minute_for_at_least_a_day() -> None:
    s = WebhookSettings()
    rng = random.Random(7)
    created = now = 1_000_000.0
    attempt = 1
    first = retry.after_failure(attempt, created, now, s, rng, max_attempts=s.max_attempts)
    assert not first.give_up and first.next_attempt_at - now < 60
    while True:
        decision = retry.after_failure(attempt, created, now, s, rng, max_attempts=s.max_attempts)
        if decision.give_up:
            break
        assert decision.next_attempt_at > now
        now = decision.next_attempt_at
        attempt += 1
    assert now - created >= 24 * 3600
    assert now - created == s.max_age  # the last attempt is at the deadline itself


def test_retry_gives_up_after_max_attempts() -> None:
    s = WebhookSettings(max_attempts=3, retry_jitter=0)
    assert not retry.after_failure(2, 0.0, 10.0, s, max_attempts=s.max_attempts).give_up
    assert retry.after_failure(3, 0.0, 10.0, s, max_attempts=s.max_attempts).give_up
    assert (
        retry.after_failure(2, 0.0, 10.0, s, max_attempts=s.max_attempts).next_attempt_at
        == 10.0 + 2 * s.retry_base
    )


def test_save_time_exemption_for_the_operators_networks() -> None:
    allow = parse_networks(["127.0.0.0/8", "fd00::/8"])
    assert check_webhook_url("http://127.0.0.1:8080/x", allow) == "http://127.0.0.1:8080/x"
    assert check_webhook_url("http://[::ffff:127.0.0.1]/x", allow)
    assert check_webhook_url("http://[fd00::1]/x", allow)
    for url in ("http://10.0.0.1/", "http://localhost/", "http://[::1]/"):
        with pytest.raises(UrlRefused):
            check_webhook_url(url, allow)


def _dns(stub: Any) -> DnsSettings:
    return DnsSettings(nameservers=[stub.nameserver], timeout=3.0)


async def test_resolver_refuses_every_non_public_answer(dns_stub: Any) -> None:
    dns_stub.a("public.example.net", "93.184.216.34")
    dns_stub.a("loop.example.net", "127.0.0.1")
    dns_stub.a("mixed.example.net", "93.184.216.34", "10.1.2.3")
    dns_stub.aaaa("mapped.example.net", "::ffff:169.254.169.254")
    dns_stub.cname("alias.example.net", "loop.example.net")
    resolver = CheckedResolver(_dns(dns_stub), ())
    assert await resolver.checked("public.example.net") == [ipaddress.ip_address("93.184.216.34")]
    for name in (
        "loop.example.net",
        "mixed.example.net",
        "mapped.example.net",
        "alias.example.net",
    ):
        with pytest.raises(AddressRefused):
            await resolver.checked(name)
    with pytest.raises(NoAddress):
        await resolver.checked("nothing.example.net")
    # What aiohttp is given is the checked address, with the name kept for Host and SNI.
    (result,) = await resolver.resolve("public.example.net", 443, 0)  # type: ignore[arg-type]
    assert result["host"] == "93.184.216.34" and result["hostname"] == "public.example.net"
    exempt = CheckedResolver(_dns(dns_stub), parse_networks(["127.0.0.0/8"]))
    assert await exempt.checked("loop.example.net") == [ipaddress.ip_address("127.0.0.1")]


async def test_send_target_unwraps_literal_notations(dns_stub: Any) -> None:
    sender = Sender(WebhookSettings(), _dns(dns_stub))
    for url in ("http://0x7f.1:9/x", "http://2130706433/", "http://[::ffff:7f00:1]/", "http://0/"):
        with pytest.raises(AddressRefused):
            await sender.target(url)
    exempt = Sender(WebhookSettings(allow_networks=["127.0.0.0/8"]), _dns(dns_stub))
    target = await exempt.target("http://0177.0.0.1:9/x?a=1")
    assert str(target) == "http://127.0.0.1:9/x?a=1"


async def test_batcher_groups_and_reports_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> None:
        if 13 in items:
            raise OSError("storage down")
        flushed.append(items)
        await asyncio.sleep(0.01)

    monkeypatch.setattr(batcher, "RETRY_DELAYS", (0.0,))
    b: batcher.Batcher[int] = batcher.Batcher(flush, name="test", linger=0.01)
    b.start()
    await asyncio.gather(*(b.submit([i]) for i in range(100, 150)))
    assert sorted(i for batch in flushed for i in batch) == list(range(100, 150))
    assert len(flushed) < 50  # gathered, not one commit each
    flushed.clear()
    # A poison item fails alone; the others of its batch are written.
    results = await asyncio.gather(*(b.submit([i]) for i in (12, 13, 14)), return_exceptions=True)
    assert [type(r) for r in results] == [type(None), OSError, type(None)]
    assert sorted(i for batch in flushed for i in batch) == [12, 14]
    await b.stop()


def test_settings_are_validated(tmp_path: Path) -> None:
    s = make_settings(tmp_path, RELAY_WEBHOOKS_ALLOW_NETWORKS="10.0.0.0/8, fd00::/8")
    assert s.webhooks.allow_networks == ["10.0.0.0/8", "fd00::/8"]
    with pytest.raises(config.ConfigError) as err:
        make_settings(
            tmp_path,
            RELAY_WEBHOOKS_ALLOW_NETWORKS="not-a-network",
            RELAY_WEBHOOKS_LEASE_SECONDS="5",
            RELAY_WEBHOOKS_RETRY_JITTER="2",
        )
    text = str(err.value)
    for needle in ("allow_networks", "lease_seconds", "retry_jitter"):
        assert needle in text

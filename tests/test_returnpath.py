"""The return path: VERP tokens, the shared key, and each rule of docs/delivery.md "Return path"
end to end: mail submitted over SMTP, delivered to the sink, MAIL FROM and headers checked, DKIM
verified against the published key (DNS stub), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import email
import email.policy
import uuid
from pathlib import Path
from typing import Any

import dkim
import pytest

from mta.returnpath import LOCAL_PART_LENGTH, PREFIX, VerpKeys, load_keys
from relay.secrets import SecretBox
from relay.services import Services
from relay.store import schema as t
from tests.bouncefix import (
    keys_of,
    message,
    route_to,
    services_of,
    start_delivering,
    submit,
    update_server,
)
from tests.provision import wait_until
from tests.relayfix import stop_relay
from tests.sink import Sink
from tests.test_dkim import stub_dnsfunc

# -- the token ----------------------------------------------------------------------------------


def test_token_round_trip_within_64_octets_and_case_insensitive() -> None:
    keys = VerpKeys(b"k" * 32)
    mid = str(uuid.uuid4())
    address = keys.address(mid, "Someone@Example.NET", "Mail.Example.COM.")
    local, _, host = address.partition("@")
    assert host == "mail.example.com" and local.startswith(PREFIX)
    assert len(local) == LOCAL_PART_LENGTH <= 64  # RFC 5321 4.5.3.1.1
    assert local == local.lower() and set(local[len(PREFIX) :]) <= set(
        "abcdefghijklmnopqrstuvwxyz234567"
    )
    for variant in (address, address.upper(), f"<{address}>", address.swapcase()):
        token = keys.parse(variant)
        assert token is not None and token.message_id == mid and token.host == "mail.example.com"
        assert keys.is_recipient(token, "someone@example.net")
        assert not keys.is_recipient(token, "other@example.net")


def test_forged_or_moved_tokens_are_refused() -> None:
    keys = VerpKeys(b"k" * 32)
    address = keys.address(str(uuid.uuid4()), "a@example.net", "mail.example.com")
    local, _, host = address.partition("@")
    assert keys.parse(f"{local}@mail.other.example") is None  # bound to its host
    assert VerpKeys(b"x" * 32).parse(address) is None  # another deployment's key
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    assert keys.parse(f"{flipped}@{host}") is None
    for bad in (
        f"{local[:-1]}@{host}",  # too short
        f"{local}a@{host}",  # too long
        f"{local[:-1]}1@{host}",  # not base32
        f"x{local[1:]}@{host}",  # not our prefix
        "postmaster@mail.example.com",
        "",
        "@",
        local,
    ):
        assert keys.parse(bad) is None, bad
    with pytest.raises(ValueError):
        keys.address("not-a-uuid", "a@example.net", "mail.example.com")


async def test_every_node_gets_the_same_key(services: Services) -> None:
    first = await load_keys(services.db, services.box)
    second = await load_keys(services.db, SecretBox())
    mid = str(uuid.uuid4())
    assert second.parse(first.address(mid, "a@example.net", "h.example")) is not None
    async with services.db.read() as conn:
        rows = (await conn.execute(t.cluster_secrets.select())).all()
    assert "return_path_verp" in [r.name for r in rows]
    configured = await load_keys(services.db, services.box, "c" * 32)
    assert configured.parse(first.address(mid, "a@example.net", "h.example")) is None
    assert VerpKeys(b"c" * 32).parse(configured.address(mid, "a@example.net", "h.example"))


async def test_the_stored_key_is_sealed_with_the_key_encryption_key(services: Services) -> None:
    import base64
    import os

    box = SecretBox(base64.b64encode(os.urandom(32)).decode())
    keys = await load_keys(services.db, box)
    async with services.db.read() as conn:
        stored = await conn.scalar(
            t.cluster_secrets.select().with_only_columns(t.cluster_secrets.c.value)
        )
    assert stored is not None and stored.startswith("enc:v1:")
    again = await load_keys(services.db, box)
    mid = str(uuid.uuid4())
    assert again.parse(keys.address(mid, "a@b.example", "h.example")) is not None


# -- the rules, end to end ------------------------------------------------------------------------


def _headers(data: bytes) -> Any:
    return email.message_from_bytes(data, policy=email.policy.SMTP)


async def _verifies(data: bytes, dns_stub: Any) -> bool:
    return bool(
        await asyncio.to_thread(dkim.verify, data, dnsfunc=stub_dnsfunc(dns_stub.nameserver))
    )


async def test_each_return_path_and_from_rule(
    tmp_path: Path, db_url: str, sink: Sink, dns_stub: Any
) -> None:
    running, session = await start_delivering(tmp_path, db_url)
    try:
        acct = await running.new_account(domain="example.com")
        host, value = acct.dkim_record
        dns_stub.txt(host, value)
        server_id = await route_to(running, sink)
        keys = await keys_of(running)

        async def deliver(rcpt: str, data: bytes | None = None) -> tuple[str, Any]:
            before = len(sink.messages)
            mid = await submit(running, acct, [rcpt], data)
            await sink.wait_for(count=before + 1)
            received = sink.messages[-1]
            assert received.rcpt_tos == [rcpt]
            return mid, received

        # 1. No EnforcedFrom: the sender domain's return-path host; the message as signed.
        mid, got = await deliver("one@example.net")
        token = keys.parse(got.mail_from)
        assert token is not None and token.message_id == mid
        assert token.host == "mail.example.com" and keys.is_recipient(token, "one@example.net")
        assert _headers(got.data)["From"] == "App <app@example.com>"
        assert _headers(got.data)["Reply-To"] is None
        assert await _verifies(got.data, dns_stub)

        # 2. EnforcedFrom: From is the enforced address (display name kept), the sender's From
        # becomes the Reply-To, MAIL FROM moves to the server's MFrom domain; signed again.
        await update_server(
            running, server_id, sink, DomainSettings_EnforcedFrom="noreply@operator.test"
        )
        mid, got = await deliver("two@example.net")
        token = keys.parse(got.mail_from)
        assert token is not None and token.message_id == mid
        assert got.mail_from.endswith("@bounce.operator.test")
        headers = _headers(got.data)
        assert headers["From"] == "App <noreply@operator.test>"
        assert headers["Reply-To"] == "App <app@example.com>"
        assert len(headers.get_all("DKIM-Signature")) == 1
        assert "d=example.com" in headers["DKIM-Signature"].replace(" ", "")
        assert await _verifies(got.data, dns_stub)

        # 2b. A message with its own Reply-To keeps it (only one Reply-To).
        mid, got = await deliver(
            "two-b@example.net",
            message("app@example.com", "two-b@example.net", extra="Reply-To: desk@example.com\r\n"),
        )
        headers = _headers(got.data)
        assert headers.get_all("Reply-To") == ["desk@example.com"]
        assert headers["From"] == "App <noreply@operator.test>"
        assert await _verifies(got.data, dns_stub)

        # 3. SenderInfoAsMFrom: From still enforced, MAIL FROM back at the sender's host.
        await update_server(
            running,
            server_id,
            sink,
            DomainSettings_EnforcedFrom="noreply@operator.test",
            SenderInfoAsMFrom="Enabled",
        )
        mid, got = await deliver("three@example.net")
        assert got.mail_from.endswith("@mail.example.com")
        assert _headers(got.data)["From"] == "App <noreply@operator.test>"
        assert await _verifies(got.data, dns_stub)

        # 4. SenderInfoAsFrom: the sender's From stays, so the sender's return path too.
        await update_server(
            running,
            server_id,
            sink,
            DomainSettings_EnforcedFrom="noreply@operator.test",
            SenderInfoAsMFrom="Disabled",
            SenderInfoAsFrom="Enabled",
        )
        mid, got = await deliver("four@example.net")
        assert got.mail_from.endswith("@mail.example.com")
        assert _headers(got.data)["From"] == "App <app@example.com>"
        assert _headers(got.data)["Reply-To"] is None
        token = keys.parse(got.mail_from)
        assert token is not None and token.message_id == mid
    finally:
        await stop_relay(running, session)


async def test_custom_subdomain_is_the_return_path_host(
    tmp_path: Path, db_url: str, sink: Sink
) -> None:
    running, session = await start_delivering(tmp_path, db_url)
    try:
        u = await running.api.call("user.create", admin=True, EmailAddress="o@example.org")
        d = await running.api.call(
            "emailgateway.adddomain",
            APIKey=u["APIKey"],
            DomainName="example.org",
            Subdomain="bounces",
        )
        assert d["Success"] and "bounces.example.org" in d["DNSRecords"], d
        domain_id = d["NewSenderDomainID"]
        await running.api.call(
            "emailgateway.setdomainstatus", admin=True, DomainID=domain_id, Status="Enabled"
        )
        c = await running.api.call("emailgateway.addsmtp", APIKey=u["APIKey"], DomainID=domain_id)
        from tests.relayfix import Account

        acct = Account(
            u["UserID"],
            u["APIKey"],
            domain_id,
            "example.org",
            c["SMTP"]["SMTPUsername"],
            c["SMTP"]["SMTPPassword"],
            d["DNSRecords"],
        )
        await route_to(running, sink)
        mid = await submit(running, acct, ["x@example.net"])
        await sink.wait_for(count=1)
        assert sink.messages[0].mail_from.endswith("@bounces.example.org")
        token = (await keys_of(running)).parse(sink.messages[0].mail_from)
        assert token is not None and token.message_id == mid
    finally:
        await stop_relay(running, session)


async def test_one_transaction_per_recipient_and_failover_mid_message(
    tmp_path: Path, db_url: str, make_sink: Any
) -> None:
    """Each recipient has its own MAIL FROM; a connection lost during the first recipient's
    DATA defers that one (the server may hold it) and moves the others to the next server."""
    first, second = await make_sink(), await make_sink()
    running, session = await start_delivering(tmp_path, db_url)
    try:
        acct = await running.new_account()
        await route_to(running, first)
        await route_to(running, second, DeliveryServerName="second")
        first.fail_first(1, None, stage="DATA")
        rcpts = ["a@example.net", "b@example.net", "c@example.net"]
        mid = await submit(running, acct, rcpts)
        await second.wait_for(count=2)
        assert sorted(r for m in second.messages for r in m.rcpt_tos) == rcpts[1:]
        assert len({m.mail_from for m in second.messages}) == 2
        keys = await keys_of(running)
        for m in second.messages:
            token = keys.parse(m.mail_from)
            assert token is not None and token.message_id == mid
            assert keys.is_recipient(token, m.rcpt_tos[0])
        services = services_of(running)
        r = t.recipients

        async def a_deferred() -> bool:
            async with services.db.read() as conn:
                rows = (
                    await conn.execute(
                        r.select()
                        .with_only_columns(r.c.rcpt, r.c.state)
                        .where(r.c.message_id == mid)
                    )
                ).all()
            return dict(rows) == {
                "a@example.net": "deferred",
                "b@example.net": "delivered",
                "c@example.net": "delivered",
            }

        await wait_until(a_deferred, what="a deferred, b and c delivered")
    finally:
        await stop_relay(running, session)


def test_only_the_canonical_spelling_of_a_token_is_accepted() -> None:
    """The last base32 character carries 3 bits of the token and 2 unused ones: a spelling
    with the unused bits set decodes to the same bytes, and is refused all the same."""
    keys = VerpKeys(b"k" * 32)
    for _ in range(20):
        address = keys.address(str(uuid.uuid4()), "a@example.net", "mail.example.com")
        local, _, host = address.partition("@")
        alphabet = "abcdefghijklmnopqrstuvwxyz234567"
        last = alphabet.index(local[-1])
        for other in alphabet:
            spelled = f"{local[:-1]}{other}@{host}"
            accepted = keys.parse(spelled) is not None
            assert accepted == (alphabet.index(other) == last), spelled

"""emailgateway.smtprelay's UUID as an idempotency key per account, and its Subject, on a whole
relay node on SQLite and PostgreSQL: a retried or concurrent call with the same UUID queues
once and answers the same; abandoned claims are taken over; keys expire."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import func, insert, select, update

from relay.admin import idempotency
from relay.smtp import replies
from relay.store import schema as t
from tests.relayfix import Account, RunningRelay, start_relay, stop_relay

RAW = "From: App <app@example.com>\r\nTo: rcpt@example.net\r\nSubject: Hello\r\n\r\nHi.\r\n"
UUID = "550e8400-e29b-41d4-a716-446655440000"


@pytest.fixture
async def running(tmp_path: Path, db_url: str) -> AsyncIterator[RunningRelay]:
    r, session = await start_relay(tmp_path, db_url)
    yield r
    await stop_relay(r, session)


@pytest.fixture
async def account(running: RunningRelay) -> Account:
    return await running.new_account()


async def relay(running: RunningRelay, acct: Account, **params: Any) -> dict[str, Any]:
    fields = {
        "SMTPUsername": acct.username,
        "SMTPPassword": acct.password,
        "MailFrom": "app@example.com",
        "RcptTo": "rcpt@example.net",
        "RawEmail": RAW,
        **params,
    }
    return await running.api.call("emailgateway.smtprelay", admin=True, **fields)


def queued_id(res: dict[str, Any]) -> str:
    assert res["ErrorCode"] == 0, res
    queue_id = str(res["SMTPResponse"]).rsplit(" ", 1)[-1]
    assert res["SMTPResponse"] == replies.QUEUED.format(id=queue_id)
    return queue_id


async def messages(running: RunningRelay) -> list[Any]:
    services = running.relay.services
    assert services is not None
    async with services.db.read() as conn:
        return list(
            (await conn.execute(select(t.messages).order_by(t.messages.c.created_at))).all()
        )


async def keys(running: RunningRelay) -> list[Any]:
    services = running.relay.services
    assert services is not None
    async with services.db.read() as conn:
        return list((await conn.execute(select(t.idempotency_keys))).all())


async def test_a_retry_queues_nothing_and_answers_the_same(
    running: RunningRelay, account: Account
) -> None:
    first = await relay(running, account, UUID=UUID)
    queue_id = queued_id(first)
    again = await relay(running, account, UUID=UUID)
    assert again == first
    # Whatever else the retry carries: the first call's answer.
    other = await relay(running, account, UUID=UUID, RcptTo="someone@example.net")
    assert queued_id(other) == queue_id
    assert [m.id for m in await messages(running)] == [queue_id]
    (key,) = await keys(running)
    assert key.queue_id == queue_id and key.completed_at is not None
    assert UUID not in key.key  # stored as its SHA-256

    # Another UUID, or none, is another message.
    assert queued_id(await relay(running, account, UUID="another")) != queue_id
    assert queued_id(await relay(running, account)) != queue_id
    assert len(await messages(running)) == 3


async def test_concurrent_calls_with_one_uuid_queue_once(
    running: RunningRelay, account: Account
) -> None:
    answers = await asyncio.gather(*(relay(running, account, UUID=UUID) for _ in range(8)))
    ids = {queued_id(a) for a in answers}
    assert len(ids) == 1, answers
    assert [m.id for m in await messages(running)] == list(ids)


async def test_uuids_are_per_account(running: RunningRelay, account: Account) -> None:
    other = await running.new_account("other@example.org", "other.example")
    raw_other = RAW.replace("app@example.com", "app@other.example")
    mine = queued_id(await relay(running, account, UUID=UUID))
    theirs = queued_id(
        await relay(running, other, UUID=UUID, MailFrom="app@other.example", RawEmail=raw_other)
    )
    assert mine != theirs and len(await messages(running)) == 2


async def test_a_refused_call_remembers_nothing(running: RunningRelay, account: Account) -> None:
    api = running.api
    await api.call(
        "emailgateway.addsuppression", APIKey=account.api_key, EmailAddress="rcpt@example.net"
    )
    refused = await relay(running, account, UUID=UUID)
    assert (refused["ErrorCode"], refused["SMTPResponse"]) == (8, replies.RCPT_SUPPRESSED)
    assert await keys(running) == []
    await api.call(
        "emailgateway.deletesuppression", APIKey=account.api_key, EmailAddress="rcpt@example.net"
    )
    queue_id = queued_id(await relay(running, account, UUID=UUID))
    assert [m.id for m in await messages(running)] == [queue_id]


async def test_a_retry_after_the_send_limit_is_reached_still_answers_the_first(
    running: RunningRelay, account: Account
) -> None:
    res = await running.api.call(
        "user.update", admin=True, UserID=account.user_id, SendLimitPerHour=1
    )
    assert res["Success"], res
    queue_id = queued_id(await relay(running, account, UUID=UUID))
    # The limit is reached (by that message): a new message is refused, the retry is not.
    assert (await relay(running, account, UUID="new"))["ErrorCode"] == 9
    assert queued_id(await relay(running, account, UUID=UUID)) == queue_id


async def claim_row(running: RunningRelay, acct: Account, queue_id: str, age: float) -> None:
    services = running.relay.services
    assert services is not None
    async with services.db.write() as conn:
        await conn.execute(
            insert(t.idempotency_keys).values(
                user_id=acct.user_id,
                key=idempotency.key_of(UUID),
                queue_id=queue_id,
                created_at=time.time() - age,
            )
        )


async def test_an_abandoned_claim_is_taken_over(running: RunningRelay, account: Account) -> None:
    # A call claimed the UUID and its process died before committing: after STALE seconds
    # a retry queues the message.
    await claim_row(running, account, "00000000-0000-0000-0000-000000000000", idempotency.STALE)
    queue_id = queued_id(await relay(running, account, UUID=UUID))
    assert queue_id != "00000000-0000-0000-0000-000000000000"
    assert [m.id for m in await messages(running)] == [queue_id]
    (key,) = await keys(running)
    assert key.queue_id == queue_id and key.completed_at is not None


async def test_an_abandoned_claim_whose_message_was_committed(
    running: RunningRelay, account: Account
) -> None:
    # Its process died after the commit, before completing the key: the retry answers that
    # message and queues nothing.
    committed = queued_id(await relay(running, account))
    await claim_row(running, account, committed, idempotency.STALE + 1)
    assert queued_id(await relay(running, account, UUID=UUID)) == committed
    assert len(await messages(running)) == 1


async def test_a_call_in_progress_is_waited_for_then_answered_later(
    running: RunningRelay, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "WAIT", 0.5)
    await claim_row(running, account, "11111111-1111-1111-1111-111111111111", 0)
    res = await relay(running, account, UUID=UUID)
    assert res == {
        "Success": False,
        "ErrorCode": 10,
        "ErrorText": "A call with this UUID is still queueing its message; retry later",
        "SMTPResponse": replies.IN_PROGRESS,
        "_status": 200,
    }
    assert replies.IN_PROGRESS.startswith("451 4.3.0 ")
    assert await messages(running) == []

    # The first call completes while the next retry waits: it gets that answer.
    services = running.relay.services
    assert services is not None
    monkeypatch.setattr(idempotency, "WAIT", 20.0)

    async def complete_soon() -> None:
        await asyncio.sleep(0.5)
        async with services.db.write() as conn:
            await conn.execute(update(t.idempotency_keys).values(completed_at=time.time()))

    retry, _ = await asyncio.gather(relay(running, account, UUID=UUID), complete_soon())
    assert queued_id(retry) == "11111111-1111-1111-1111-111111111111"


async def test_keys_expire(running: RunningRelay, account: Account) -> None:
    old = queued_id(await relay(running, account, UUID=UUID))
    services = running.relay.services
    assert services is not None
    async with services.db.write() as conn:
        await conn.execute(
            update(t.idempotency_keys).values(created_at=time.time() - idempotency.WINDOW - 1)
        )
    new = queued_id(await relay(running, account, UUID=UUID))
    assert new != old and len(await messages(running)) == 2
    async with services.db.read() as conn:
        count = await conn.scalar(select(func.count()).select_from(t.idempotency_keys))
    assert count == 1


def verify_dkim(acct: Account, body: bytes) -> bool:
    host, value = acct.dkim_record

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return value.encode() if name.decode().rstrip(".") == host else None

    return bool(dkim.verify(body, dnsfunc=dnsfunc))


async def test_subject_becomes_the_header_when_raw_email_has_none(
    running: RunningRelay, account: Account
) -> None:
    no_subject = "From: App <app@example.com>\r\nTo: rcpt@example.net\r\n\r\nHi.\r\n"
    queued_id(await relay(running, account, RawEmail=no_subject, Subject="Grüße\r\nBcc: x@y"))
    queued_id(await relay(running, account, RawEmail=RAW, Subject="Not this one"))
    queued_id(await relay(running, account, RawEmail=no_subject, Subject=""))
    first, second, third = await messages(running)
    parsed = email.message_from_bytes(first.body, policy=email.policy.default)
    # Encoded (RFC 2047), and no header injection: the line break is a space.
    assert parsed["Subject"] == "Grüße Bcc: x@y"
    assert b"=?utf-8?" in first.body and b"\r\nBcc:" not in first.body
    assert verify_dkim(account, first.body)  # added before signing, and signed
    assert email.message_from_bytes(second.body)["Subject"] == "Hello"
    assert email.message_from_bytes(third.body)["Subject"] is None

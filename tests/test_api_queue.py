"""The queue.* admin commands over real HTTP, on SQLite and PostgreSQL (relay/queue/control.py has
the semantics' own tests in test_queue_control.py), and which admin calls the audit log takes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from relay.admin import audit
from relay.admin.dispatcher import COMMANDS
from relay.queue.backend import open_backend
from relay.queue.model import DEFERRED, DeliveryOutcome
from relay.services import Services
from tests.apihelpers import Account, make_account, queue_writer
from tests.conftest import Api

HOUR = 3600.0


async def accept(services: Services, acct: Account, rcpts: list[str], **kw: Any) -> str:
    from relay.queue.model import NewMessage

    mid = str(uuid.uuid4())
    async with queue_writer(services) as writer:
        await writer.submit(
            NewMessage(
                id=mid,
                user_id=acct.user_id,
                domain_id=acct.domain_id,
                source="api",
                mail_from=f"app@{acct.domain}",
                recipients=rcpts,
                body=b"Subject: hi\r\n\r\nhi\r\n",
                created_at=kw.pop("at", time.time()),
                **kw,
            )
        )
    return mid


async def defer(services: Services, acct: Account, mid: str) -> None:
    queue = open_backend(services.db, "test-api-queue")
    try:
        claimed = await queue.claim("w", 100, 60)
        await queue.record_outcomes(
            [
                DeliveryOutcome(
                    recipient_id=c.id,
                    message_id=c.message_id,
                    user_id=acct.user_id,
                    domain_id=acct.domain_id,
                    rcpt=c.rcpt,
                    state=DEFERRED,
                    event="deferred",
                    attempts=1,
                    next_attempt_at=time.time() + HOUR,
                    code=451,
                    response="451 4.7.1 Greylisted",
                )
                for c in claimed
                if c.message_id == mid
            ]
        )
        await queue.release("w")
    finally:
        await queue.close()


async def test_list_filters_and_pages(api: Api, services: Services) -> None:
    shop = await make_account(api, "shop@example.com", "example.com")
    news = await make_account(api, "news@example.org", "news.example.org")
    deferred = await accept(services, shop, ["a@gmail.com", "b@gmail.com"], at=time.time() - HOUR)
    await defer(services, shop, deferred)
    scheduled = await accept(services, news, ["c@yahoo.com"], not_before=time.time() + HOUR)

    res = await api.call("queue.list", admin=True)
    assert res["Success"] is True and res["Next"] is None
    items = {i["Recipient"]: i for i in res["Recipients"]}
    assert set(items) == {"a@gmail.com", "b@gmail.com", "c@yahoo.com"}
    a = items["a@gmail.com"]
    assert (a["QueueID"], a["State"], a["Attempts"], a["LastCode"]) == (
        deferred,
        "deferred",
        1,
        451,
    )
    assert (a["LastResponse"], a["SenderDomain"], a["InDelivery"]) == (
        "451 4.7.1 Greylisted", "example.com", False
    )  # fmt: skip
    assert a["NextAttemptAt"] > time.time() + HOUR - 60
    c = items["c@yahoo.com"]
    assert (c["QueueID"], c["State"], c["SenderDomain"]) == (
        scheduled,
        "scheduled",
        "news.example.org",
    )

    async def rcpts(**params: Any) -> list[str]:
        got = await api.call("queue.list", admin=True, **params)
        assert got["Success"] is True, got
        return [i["Recipient"] for i in got["Recipients"]]

    assert await rcpts(SenderDomain="news.example.org") == ["c@yahoo.com"]
    assert await rcpts(RecipientDomain="gmail.com") == ["a@gmail.com", "b@gmail.com"]
    assert await rcpts(State="Scheduled") == ["c@yahoo.com"]
    assert await rcpts(OlderThan=1800) == ["a@gmail.com", "b@gmail.com"]
    first = await api.call("queue.list", admin=True, RetrieveCount=2)
    assert len(first["Recipients"]) == 2 and first["Next"]
    rest = await api.call("queue.list", admin=True, RetrieveCount=2, After=first["Next"])
    seen = [i["Recipient"] for i in first["Recipients"] + rest["Recipients"]]
    assert sorted(seen) == ["a@gmail.com", "b@gmail.com", "c@yahoo.com"]
    assert rest["Next"] is None

    for params, code in (
        ({"State": "stuck"}, 3),
        ({"OlderThan": "soon"}, 4),
        ({"OlderThan": -5}, 4),
        ({"RetrieveCount": 0}, 5),
        ({"RetrieveCount": 1001}, 5),
        ({"After": "somewhere"}, 6),
    ):
        got = await api.call("queue.list", admin=True, **params)
        assert (got["Success"], got["ErrorCode"]) == (False, code), (params, got)
    # The user's own key is not the admin's.
    got = await api.call("queue.list", APIKey=shop.api_key)
    assert got["Success"] is False and got["ErrorCode"] == 99999, got


async def test_hold_release_retry_delete(api: Api, services: Services) -> None:
    shop = await make_account(api, "shop@example.com", "example.com")
    other = await make_account(api, "other@example.org", "example.org")
    mid = await accept(services, shop, ["a@example.net", "b@example.net"])
    kept = await accept(services, other, ["c@example.net"])
    woken: list[int] = []
    services.on_enqueued.append(lambda: woken.append(1))

    held = await api.call("queue.hold", admin=True, SenderDomain="example.com")
    assert (held["Success"], held["Recipients"], held["Messages"], held["QueueIDs"]) == (
        True, 2, 1, [mid]
    )  # fmt: skip
    listed = await api.call("queue.list", admin=True, State="held")
    assert {i["Recipient"] for i in listed["Recipients"]} == {"a@example.net", "b@example.net"}
    assert woken == []
    released = await api.call("queue.release", admin=True, MessageID=mid)
    assert (released["Recipients"], released["InDelivery"]) == (2, 0)
    # Released: this node's delivery workers are woken at once (SQLite has no NOTIFY).
    assert woken == [1]

    await defer(services, shop, mid)
    retried = await api.call("queue.retry", admin=True, MessageID=[mid, kept])
    assert (retried["Recipients"], retried["QueueIDs"]) == (2, [mid])
    assert woken == [1, 1]

    gone = await api.call("queue.delete", admin=True, MessageID=f"{mid}, nope")
    assert (gone["Recipients"], gone["Unknown"]) == (2, ["nope"])
    msg = await api.call("emailgateway.getmessage", admin=True, MessageID=mid)
    (view,) = msg["Messages"]
    assert {r["State"] for r in view["Recipients"]} == {"failed"}
    failed = [e for e in view["Events"] if e["event"] == "failed"]
    assert len(failed) == 2 and failed[0]["data"] == {"reason": "deleted", "by": "admin"}
    assert view["Headers"] == []  # every recipient final: the content is gone

    missing = await api.call("queue.hold", admin=True, MessageID="no-such-id")
    assert (missing["Success"], missing["ErrorCode"]) == (False, 2)
    nothing = await api.call("queue.delete", admin=True)
    assert (nothing["Success"], nothing["ErrorCode"]) == (False, 1)
    bad = await api.call("queue.retry", admin=True, All=True, State="waiting")
    assert (bad["Success"], bad["ErrorCode"]) == (False, 3)
    # All with no filter: every live recipient (here: kept's).
    everything = await api.call("queue.hold", admin=True, All=True)
    assert (everything["Recipients"], everything["QueueIDs"]) == (1, [kept])


async def test_getmessage_shows_held_scheduled_and_the_headers(
    api: Api, services: Services
) -> None:
    shop = await make_account(api, "shop@example.com", "example.com")
    later = time.time() + HOUR
    mid = await accept(services, shop, ["a@example.net", "b@example.net"], not_before=later)
    await api.call("queue.hold", admin=True, MessageID=mid, RecipientDomain="example.net")
    await api.call("queue.release", admin=True, MessageID=mid)
    await api.call("queue.hold", admin=True, MessageID=mid)
    await api.call("queue.release", admin=True, MessageID=mid)
    res = await api.call("emailgateway.getmessage", APIKey=shop.api_key, MessageID=mid)
    (view,) = res["Messages"]
    assert view["ScheduledAt"] == int(later)
    assert view["Headers"] == [{"Name": "Subject", "Value": "hi"}]
    assert {(r["State"], r["NextAttemptAt"]) for r in view["Recipients"]} == {
        ("scheduled", int(later))
    }
    await api.call("queue.hold", admin=True, MessageID=mid)
    res = await api.call("emailgateway.getmessage", APIKey=shop.api_key, MessageID=mid)
    assert {(r["State"], r["NextAttemptAt"]) for r in res["Messages"][0]["Recipients"]} == {
        ("held", None)
    }


def test_the_audit_log_takes_changes_not_reads() -> None:
    import relay.admin.commands  # noqa: F401  (registers every command)

    changes = {name for name in COMMANDS if audit.changes(name)}
    for read in (
        "emailgateway.getevents",
        "emailgateway.getevents.public",
        "emailgateway.exportevents",
        "emailgateway.aggrevents",
        "emailgateway.getmessage",
        "emailgateway.domainstats",
        "users.get",
        "deliveryservers.get",
        "user.senderdomain.list",
        "user.senderdomain.dns",
        "sender.domains",
        "inbound-relay-domain-check",
        "queue.list",
    ):
        assert read in COMMANDS and read not in changes, read
    for change in (
        "user.create",
        "user.delete",
        "emailgateway.addsmtp",
        "emailgateway.resetsmtppassword",
        "emailgateway.setdomainstatus",
        "emailgateway.cleardomainqueue",
        "emailgateway.deletesuppression",
        "emailgateway.addwebhook.public",
        "deliveryserver.update",
        "deliveryserver.testresults",
        "user.senderdomain.verify",
    ):
        assert change in changes, change
    # Messages sent, and the queue commands, have lines of their own.
    for own in ("emailgateway.sendemail.public", "emailgateway.smtprelay", "queue.hold"):
        assert own not in changes


@pytest.mark.parametrize(
    ("principal", "said"),
    [
        (audit.Principal("admin"), "admin"),
        (audit.Principal("user", user_id=4, via="api_key"), "user:4 (api_key)"),
        (audit.Principal("user", user_id=4, via="session"), "user:4 (session)"),
        (audit.Principal("sender_key", user_id=4, api_key_id=9), "sender-key:9 (user 4)"),
    ],
)
def test_who_made_a_change(principal: audit.Principal, said: str) -> None:
    assert audit.actor(principal) == said

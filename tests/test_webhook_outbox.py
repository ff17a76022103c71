"""The outbox at the database level (both backends): the trigger writes deliveries in the
event's transaction, the 0004 migration's keys, two workers sharing one outbox."""

from __future__ import annotations

import importlib
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from relay import config, events
from relay.queue.model import NewEvent, NewMessage
from relay.secrets import SecretBox
from relay.services import Services
from relay.store import migrate
from relay.store import schema as t
from relay.store.repos import sealing
from relay.webhooks.worker import WebhookWorker
from tests.apihelpers import make_account, queue_writer
from tests.conftest import Api, make_settings
from tests.provision import wait_until
from tests.webhookreceiver import Receiver


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> config.Settings:
    return make_settings(
        tmp_path,
        db_url,
        RELAY_WEBHOOKS_ALLOW_NETWORKS="127.0.0.0/8",
        RELAY_WEBHOOKS_POLL_INTERVAL="0.2",
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    await rx.start()
    yield rx
    await rx.stop()


async def _webhook(api: Api, acct: Any, event: str, url: str) -> int:
    res = await api.call(
        "emailgateway.addwebhook",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        Event=event,
        WebhookURL=url,
    )
    assert res["Success"], res
    return int(res["NewWebhookID"])


async def _pending(services: Services) -> list[Any]:
    d = t.webhook_deliveries
    async with services.db.read() as conn:
        return list((await conn.execute(select(d).order_by(d.c.id))).all())


def _event_sql(domain_id: int, user_id: int, event: str) -> Any:
    return text(
        "INSERT INTO events (created_at, user_id, domain_id, event) "
        f"VALUES (1.0, {user_id}, {domain_id}, '{event}')"
    )


async def test_deliveries_are_written_with_the_event_and_only_if_it_commits(
    api: Api, services: Services
) -> None:
    acct = await make_account(api)
    other = await make_account(api, "other@example.com", "other.example")
    wid = await _webhook(api, acct, "delivery", "https://hooks.example.net/a")
    # Any writer of events is covered, even raw SQL; a rolled-back event posts nothing.
    with pytest.raises(RuntimeError):
        async with services.db.write() as conn:
            await conn.execute(_event_sql(acct.domain_id, acct.user_id, "delivered"))
            raise RuntimeError("roll back")
    assert await _pending(services) == []
    async with services.db.write() as conn:
        await conn.execute(_event_sql(acct.domain_id, acct.user_id, "delivered"))
        await conn.execute(_event_sql(acct.domain_id, acct.user_id, "accepted"))
        await conn.execute(_event_sql(other.domain_id, other.user_id, "delivered"))
    (row,) = await _pending(services)
    assert (row.webhook_id, row.event, row.state, row.attempts) == (wid, "delivered", "pending", 0)
    assert re.fullmatch(r"msg_[0-9a-f]{32}", row.msg_id)
    # Deleting the webhook cancels what it had pending, in the same transaction.
    res = await api.call(
        "emailgateway.deletewebhook", APIKey=acct.api_key, WebhookID=wid, DomainID=acct.domain_id
    )
    assert res["Success"] is True
    (row,) = await _pending(services)
    assert row.state == "cancelled"
    async with services.db.write() as conn:
        await conn.execute(_event_sql(acct.domain_id, acct.user_id, "delivered"))
    assert len(await _pending(services)) == 1


async def test_the_group_commit_and_its_messages_headers(api: Api, services: Services) -> None:
    acct = await make_account(api)
    await _webhook(api, acct, "bounced", "https://hooks.example.net/b")
    mid = str(uuid.uuid4())
    async with queue_writer(services) as writer:
        await writer.submit(
            NewMessage(
                id=mid, user_id=acct.user_id, domain_id=acct.domain_id, source="smtp",
                mail_from="bounce@example.com", recipients=["a@example.net", "b@example.net"],
                body=b"x", header_from="", subject="Subject here", message_id_header="<x@y>",
            )
        )  # fmt: skip
        for rcpt in ("a@example.net", "b@example.net"):
            writer.record(
                NewEvent(
                    user_id=acct.user_id, domain_id=acct.domain_id, event=events.BOUNCED,
                    recipient=rcpt, message_id=mid, smtp_code=550, smtp_response="550 no",
                )
            )  # fmt: skip
    rows = await _pending(services)
    assert [r.recipient for r in rows] == ["a@example.net", "b@example.net"]
    assert len({r.msg_id for r in rows}) == 2
    for r in rows:
        # No From header stored: the envelope sender stands in, as in the event API.
        assert (r.header_from, r.subject, r.message_id_header) == (
            "bounce@example.com",
            "Subject here",
            "<x@y>",
        )
        assert (r.message_id, r.smtp_code, r.smtp_response) == (mid, 550, "550 no")


def test_the_migration_maps_both_vocabularies_like_the_code() -> None:
    mig = importlib.import_module("relay.store.migrations.versions.0004_webhook_outbox")
    assert {v: k for k, v in mig.SUBSCRIPTIONS.items()} == events.WEBHOOK_EVENTS


async def test_migration_gives_every_domain_its_own_key_then_start_seals_them(
    tmp_path: Path, db_url: str
) -> None:
    import base64
    import os

    from alembic import command

    kek = base64.b64encode(os.urandom(32)).decode()
    settings = make_settings(tmp_path, db_url, RELAY_KEY_ENCRYPTION_KEY=kek)
    services = await Services.create(settings)
    db = services.db
    try:
        await migrate.upgrade(db)
        async with db.engine.begin() as conn:
            await conn.run_sync(lambda sync: command.downgrade(migrate._config(sync), "0001"))
        async with db.write() as conn:
            await conn.execute(
                text(
                    "INSERT INTO users (id, email, group_id, api_key_hash, created_at, updated_at)"
                    " VALUES (7, 'a@example.com', 1, 'h', '2026-01-01', '2026-01-01')"
                )
            )
            for i, rotated in ((1, None), (2, None), (3, "ROTATED-BEFORE")):
                await conn.execute(
                    text(
                        "INSERT INTO gateway_domains (id, user_id, name, options, dkim_selector,"
                        " dkim_private_key, dkim_public_key, signing_key, verification_meta,"
                        " policy_meta, created_at, updated_at) VALUES (:i, 7, :n, '{}', 's', 'k',"
                        " 'p', :key, '{}', '[]', '2026-01-01', '2026-01-01')"
                    ),
                    {"i": i, "n": f"d{i}.example", "key": rotated},
                )
        await migrate.upgrade(db)
        d = t.gateway_domains
        async with db.read() as conn:
            keys = dict((await conn.execute(select(d.c.id, d.c.signing_key))).all())
        assert re.fullmatch(r"[0-9A-F]{64}", keys[1]) and re.fullmatch(r"[0-9A-F]{64}", keys[2])
        assert keys[1] != keys[2] and keys[3] == "ROTATED-BEFORE"
        # The migration cannot know the key-encryption key: the relay seals them at start.
        box = SecretBox(kek)
        async with db.write() as conn:
            assert await sealing.seal_plaintext(conn, box.seal) == 6  # 3 signing, 3 DKIM keys
        async with db.read() as conn:
            sealed = dict((await conn.execute(select(d.c.id, d.c.signing_key))).all())
        assert all(SecretBox.is_sealed(v) for v in sealed.values())
        assert {i: box.open(v) for i, v in sealed.items()} == keys
        async with db.write() as conn:
            assert await sealing.seal_plaintext(conn, box.seal) == 0
    finally:
        await services.close()


@pytest.mark.postgres
async def test_two_workers_never_post_one_delivery_at_once(
    tmp_path: Path, pg_url: str, receiver: Receiver
) -> None:
    settings = make_settings(
        tmp_path, pg_url, RELAY_WEBHOOKS_ALLOW_NETWORKS="127.0.0.0/8",
        RELAY_WEBHOOKS_POLL_INTERVAL="0.2", RELAY_WEBHOOKS_BATCH_SIZE="7",
        RELAY_WEBHOOKS_CONCURRENCY="5", RELAY_WEBHOOKS_PER_ENDPOINT_CONCURRENCY="3",
    )  # fmt: skip
    services = await Services.create(settings)
    await services.start()
    from relay.admin.app import AdminServer

    server = AdminServer(services, "127.0.0.1", 0)
    await server.start()
    workers: list[WebhookWorker] = []
    try:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            api = Api(f"http://127.0.0.1:{server.port}", session)
            acct = await make_account(api)
            for path in ("/one", "/two"):
                await _webhook(api, acct, "delivery", receiver.url(path))
        total = 150
        async with queue_writer(services) as writer:
            for _ in range(total):
                writer.record(
                    NewEvent(
                        user_id=acct.user_id, domain_id=acct.domain_id, event=events.DELIVERED,
                        recipient="r@example.net",
                    )
                )  # fmt: skip
        posted: Counter[int] = Counter()
        for n in range(2):
            worker = WebhookWorker(services)
            original = worker.sender.post

            async def counted(*args: Any, n: int = n, original: Any = original) -> Any:
                posted[n] += 1
                return await original(*args)

            worker.sender.post = counted  # type: ignore[method-assign]
            workers.append(worker)
        await workers[0].start()
        await workers[1].start()
        await wait_until(lambda: len(receiver.requests) >= 2 * total, what="every post")
        await wait_until(
            lambda: _all_delivered(services, 2 * total), what="every delivery recorded"
        )
        ids = Counter(r.webhook_id for r in receiver.requests)
        assert len(ids) == 2 * total and set(ids.values()) == {1}
        assert max(receiver.max_open_per_id.values()) == 1
        assert posted[0] > 0 and posted[1] > 0
        assert max(receiver.max_open.values()) <= 2 * 3
    finally:
        for worker in workers:
            await worker.stop(5)
        await server.stop()
        await services.close()


async def _all_delivered(services: Services, count: int) -> bool:
    rows = await _pending(services)
    return len(rows) == count and all(r.state == "delivered" for r in rows)


async def test_upkeep_cancels_orphans_and_purges_by_age(api: Api, services: Services) -> None:
    from relay.webhooks.store import open_store

    acct = await make_account(api)
    kept = await _webhook(api, acct, "delivery", "https://hooks.example.net/kept")
    gone = await _webhook(api, acct, "delivery", "https://hooks.example.net/gone")
    async with services.db.write() as conn:
        for _ in range(3):
            await conn.execute(_event_sql(acct.domain_id, acct.user_id, "delivered"))
        # Deleted by a path that does not go through deletewebhook (user.delete does that).
        await conn.execute(text(f"UPDATE webhooks SET status = 'Deleted' WHERE id = {gone}"))
        # Two of the kept webhook's deliveries finished long ago, with their attempts.
        await conn.execute(
            text(
                "UPDATE webhook_deliveries SET state = 'delivered', updated_at = 5.0 "
                f"WHERE webhook_id = {kept} AND id IN (SELECT id FROM webhook_deliveries "
                f"WHERE webhook_id = {kept} ORDER BY id LIMIT 2)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO webhook_attempts (delivery_id, webhook_id, attempt, attempted_at,"
                f" latency, outcome) VALUES (1, {kept}, 1, 5.0, 0.1, 'delivered'),"
                f" (2, {kept}, 1, 9e9, 0.1, 'delivered')"
            )
        )
    store = open_store(services.db)
    try:
        assert await store.backlog() == (4, (await store.backlog())[1])
        assert await store.cancel_orphans(100.0) == 3
        assert (await store.backlog())[0] == 1
        assert await store.purge(10.0) == 3  # two deliveries, one attempt
        assert await store.purge(10.0) == 0
    finally:
        await store.close()
    rows = await _pending(services)
    assert sorted(r.state for r in rows) == ["cancelled"] * 3 + ["pending"]
    async with services.db.read() as conn:
        (left,) = (await conn.execute(text("SELECT attempted_at FROM webhook_attempts"))).one()
    assert left == 9e9

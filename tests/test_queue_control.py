"""Queue control (relay/queue/control.py) on SQLite and PostgreSQL: listing with filters, retry,
hold and release, delete, all against the rows a delivery worker leases and finishes (the real
queue backend's claims and outcome batches). The CLI and the admin API on a running relay are in
test_queuecli.py and test_api_queue.py."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from relay import events
from relay.queue import control
from relay.queue.backend import QueueBackend, open_backend
from relay.queue.control import Selection, SelectionError
from relay.queue.ingest import QueueWriter
from relay.queue.model import DEFERRED, DELIVERED, DeliveryOutcome, NewMessage
from relay.services import Services
from relay.store import schema as t
from tests.apihelpers import Account, make_account
from tests.conftest import Api

BODY = b"Subject: queued\r\n\r\nbody\r\n"
HOUR = 3600.0


@dataclass
class World:
    services: Services
    queue: QueueBackend
    writer: QueueWriter
    shop: Account  # example.com
    news: Account  # news.example.org

    async def accept(
        self, acct: Account, rcpts: list[str], *, at: float | None = None, **kw: Any
    ) -> str:
        mid = str(uuid.uuid4())
        await self.writer.submit(
            NewMessage(
                id=mid,
                user_id=acct.user_id,
                domain_id=acct.domain_id,
                source="smtp",
                mail_from=f"app@{acct.domain}",
                recipients=rcpts,
                body=kw.pop("body", BODY),
                created_at=time.time() if at is None else at,
                **kw,
            )
        )
        return mid

    async def rows(self, mid: str) -> dict[str, Any]:
        r = t.recipients
        async with self.services.db.read() as conn:
            found = (await conn.execute(select(r).where(r.c.message_id == mid))).all()
        return {row.rcpt: row for row in found}

    async def state(self, mid: str) -> dict[str, str]:
        return {rcpt: row.state for rcpt, row in (await self.rows(mid)).items()}

    async def body(self, mid: str) -> bytes | None:
        m = t.messages
        async with self.services.db.read() as conn:
            value: bytes | None = (
                await conn.execute(select(m.c.body).where(m.c.id == mid))
            ).scalar_one()
        return value

    async def events_of(self, mid: str) -> list[Any]:
        e = t.events
        async with self.services.db.read() as conn:
            stmt = select(e).where(e.c.message_id == mid).order_by(e.c.id)
            return list((await conn.execute(stmt)).all())

    async def defer(self, mid: str, *, until: float, now: float | None = None) -> None:
        """A delivery attempt of every due recipient of ``mid`` that ends deferred."""
        now = time.time() if now is None else now
        due = await self.queue.claim("w", 100, 60, now)
        claimed = [c for c in due if c.message_id == mid]
        assert claimed
        await self.queue.record_outcomes([self.outcome(c, mid, DEFERRED, until) for c in claimed])
        await self.queue.release("w", [c.id for c in due if c.message_id != mid])

    def outcome(self, claimed: Any, mid: str, state: str, until: float = 0.0) -> DeliveryOutcome:
        final = state == DELIVERED
        return DeliveryOutcome(
            recipient_id=claimed.id,
            message_id=mid,
            user_id=self.shop.user_id,
            domain_id=self.shop.domain_id,
            rcpt=claimed.rcpt,
            state=state,
            event=events.DELIVERED if final else events.DEFERRED,
            attempts=claimed.attempts + 1,
            next_attempt_at=until or time.time(),
            code=250 if final else 451,
            response="250 2.0.0 Ok" if final else "451 4.7.1 Try again later",
        )


@pytest.fixture
async def w(services: Services, api: Api) -> AsyncIterator[World]:
    shop = await make_account(api, "shop@example.com", "example.com")
    news = await make_account(api, "news@example.org", "news.example.org")
    queue = open_backend(services.db, "test-control")
    writer = QueueWriter(services.db)
    await writer.start()
    yield World(services, queue, writer, shop, news)
    await writer.stop()
    await queue.close()


async def listed(w: World, sel: Selection, **kw: Any) -> list[tuple[str, str]]:
    page = await control.list_queue(w.services.db, sel, **kw)
    return [(e.recipient, e.state) for e in page.entries]


# -- listing -----------------------------------------------------------------------------------


async def test_list_shows_every_live_recipient_with_its_state_and_filters(w: World) -> None:
    now = time.time()
    old = await w.accept(w.shop, ["a@gmail.com", "b@yahoo.com"], at=now - 3 * HOUR)
    later = await w.accept(w.shop, ["c@gmail.com"], not_before=now + HOUR)
    news = await w.accept(w.news, ["d@gmail.com"])
    done = await w.accept(w.shop, ["e@gmail.com"])
    await w.defer(old, until=now + 600)
    (claimed,) = [c for c in await w.queue.claim("w", 10, 60) if c.message_id == done]
    await w.queue.record_outcomes([w.outcome(claimed, done, DELIVERED)])
    await control.hold(w.services.db, Selection(message_ids=(news,)))

    everything = await control.list_queue(w.services.db, Selection(everything=True))
    by_rcpt = {e.recipient: e for e in everything.entries}
    assert set(by_rcpt) == {"a@gmail.com", "b@yahoo.com", "c@gmail.com", "d@gmail.com"}
    a = by_rcpt["a@gmail.com"]
    assert (a.queue_id, a.state, a.attempts, a.last_code) == (old, "deferred", 1, 451)
    assert a.last_response == "451 4.7.1 Try again later"
    assert a.next_attempt_at == pytest.approx(now + 600)
    assert (a.sender, a.sender_domain, a.in_delivery) == ("app@example.com", "example.com", False)
    assert by_rcpt["c@gmail.com"].state == "scheduled"
    assert by_rcpt["c@gmail.com"].next_attempt_at == pytest.approx(now + HOUR)
    held = by_rcpt["d@gmail.com"]
    assert (held.state, held.next_attempt_at, held.sender_domain) == (
        "held",
        None,
        "news.example.org",
    )
    # Pending first, in next-attempt order, then the held ones.
    assert [e.recipient for e in everything.entries] == [
        "a@gmail.com", "b@yahoo.com", "c@gmail.com", "d@gmail.com"
    ]  # fmt: skip
    assert everything.after is None

    assert await listed(w, Selection(recipient_domain="GMAIL.com")) == [
        ("a@gmail.com", "deferred"), ("c@gmail.com", "scheduled"), ("d@gmail.com", "held")
    ]  # fmt: skip
    assert await listed(w, Selection(sender_domain=" News.Example.ORG")) == [
        ("d@gmail.com", "held")
    ]
    assert await listed(w, Selection(state="scheduled")) == [("c@gmail.com", "scheduled")]
    assert await listed(w, Selection(state="held")) == [("d@gmail.com", "held")]
    assert await listed(w, Selection(state="deferred", sender_domain="example.com")) == [
        ("a@gmail.com", "deferred"), ("b@yahoo.com", "deferred")
    ]  # fmt: skip
    assert await listed(w, Selection(older_than=2 * HOUR)) == [
        ("a@gmail.com", "deferred"), ("b@yahoo.com", "deferred")
    ]  # fmt: skip
    assert await listed(w, Selection(message_ids=(later, news))) == [
        ("c@gmail.com", "scheduled"), ("d@gmail.com", "held")
    ]  # fmt: skip
    queued = await w.accept(w.shop, ["f@gmail.com"])
    assert await listed(w, Selection(state="queued")) == [("f@gmail.com", "queued")]
    assert await listed(w, Selection(message_ids=(queued,), state="deferred")) == []


async def test_list_pages_through_pending_then_held(w: World) -> None:
    mids = [await w.accept(w.shop, [f"r{i}@example.net"]) for i in range(5)]
    await control.hold(w.services.db, Selection(message_ids=tuple(mids[3:])))
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = await control.list_queue(
            w.services.db, Selection(everything=True), after=after, limit=2
        )
        seen += [e.recipient for e in page.entries]
        pages += 1
        if page.after is None:
            break
        after = page.after
    assert seen == [f"r{i}@example.net" for i in range(5)] and pages == 3
    with pytest.raises(SelectionError):
        await control.list_queue(w.services.db, Selection(everything=True), after="nonsense")


def test_a_selection_says_what_is_wrong() -> None:
    with pytest.raises(SelectionError, match="state must be one of"):
        Selection(state="stuck")
    with pytest.raises(SelectionError, match="older than"):
        Selection(older_than=-1)
    assert not Selection().names_something
    assert Selection(state="deferred").names_something
    assert Selection(message_ids=("x",)).names_something


# -- retry ---------------------------------------------------------------------------------------


async def test_retry_makes_deferred_recipients_due_now_and_leaves_the_rest(w: World) -> None:
    now = time.time()
    deferred = await w.accept(w.shop, ["a@example.net", "b@example.net"])
    await w.defer(deferred, until=now + HOUR)
    scheduled = await w.accept(w.shop, ["s@example.net"], not_before=now + HOUR)
    other = await w.accept(w.news, ["o@example.net"])
    await w.defer(other, until=now + HOUR)

    changed = await control.retry(w.services.db, Selection(message_ids=(deferred, "nope")))
    assert (changed.recipients, changed.messages, changed.unknown) == (2, {deferred: 2}, ["nope"])
    rows = await w.rows(deferred)
    assert all(r.next_attempt_at <= time.time() for r in rows.values())
    # Due now: the next claim takes them (and nothing else).
    claimed = await w.queue.claim("w", 10, 60)
    assert sorted(c.rcpt for c in claimed) == ["a@example.net", "b@example.net"]
    # Leased right now: a retry leaves them to the delivery that holds them.
    everything = await control.retry(w.services.db, Selection(everything=True))
    assert (everything.messages, everything.in_delivery) == ({other: 1}, {deferred: 2})
    assert (await w.rows(other))["o@example.net"].next_attempt_at <= time.time()
    # A scheduled message keeps its time.
    assert (await w.rows(scheduled))["s@example.net"].next_attempt_at == pytest.approx(now + HOUR)
    assert (await control.retry(w.services.db, Selection(state="scheduled"))).recipients == 0


async def test_retry_by_recipient_domain(w: World) -> None:
    mid = await w.accept(w.shop, ["a@gmail.com", "b@yahoo.com"])
    await w.defer(mid, until=time.time() + HOUR)
    changed = await control.retry(w.services.db, Selection(recipient_domain="yahoo.com"))
    assert changed.recipients == 1
    rows = await w.rows(mid)
    assert rows["b@yahoo.com"].next_attempt_at <= time.time() < rows["a@gmail.com"].next_attempt_at


# -- hold and release ---------------------------------------------------------------------------


async def test_held_recipients_are_never_claimed_until_released(w: World) -> None:
    now = time.time()
    fresh = await w.accept(w.shop, ["a@example.net"])
    tried = await w.accept(w.shop, ["b@example.net"])
    await w.defer(tried, until=now + HOUR)
    scheduled = await w.accept(w.shop, ["c@example.net"], not_before=now + HOUR)
    kept = await w.accept(w.news, ["d@example.net"])

    changed = await control.hold(w.services.db, Selection(sender_domain="example.com"))
    assert (changed.recipients, set(changed.messages)) == (3, {fresh, tried, scheduled})
    assert await w.state(fresh) == {"a@example.net": "held"}
    # Not claimed, even long after they were due; the other domain's mail goes on.
    claimed = await w.queue.claim("w", 10, 60, now + 2 * HOUR)
    assert [c.message_id for c in claimed] == [kept]
    depth = await w.queue.pending(now)
    assert (depth.pending, depth.scheduled, depth.held) == (1, 0, 3)  # 1: kept, leased
    # Survives a new connection (a restart): the state is in the database.
    await w.queue.close()
    w.queue = open_backend(w.services.db, "test-control-again")
    assert await w.queue.claim("w2", 10, 60, now + 2 * HOUR) == []
    # The body stays while recipients are held, though nothing else waits for it.
    assert await w.body(fresh) == BODY

    released = await control.release(w.services.db, Selection(everything=True))
    assert released.recipients == 3
    rows = {**await w.rows(fresh), **await w.rows(tried), **await w.rows(scheduled)}
    assert {k: r.state for k, r in rows.items()} == {
        "a@example.net": "queued", "b@example.net": "deferred", "c@example.net": "queued"
    }  # fmt: skip
    # Tried before: due now. Never tried: due at acceptance; scheduled: still at its time.
    assert rows["b@example.net"].next_attempt_at <= time.time()
    assert rows["a@example.net"].next_attempt_at == pytest.approx(rows["a@example.net"].created_at)
    assert rows["c@example.net"].next_attempt_at == pytest.approx(now + HOUR)
    claimed = await w.queue.claim("w2", 10, 60)
    assert sorted(c.rcpt for c in claimed) == ["a@example.net", "b@example.net"]


async def test_a_hold_lets_the_attempt_in_flight_finish(w: World) -> None:
    mid = await w.accept(w.shop, ["ok@example.net", "later@example.net"])
    claimed = {c.rcpt: c for c in await w.queue.claim("w", 10, 60)}
    changed = await control.hold(w.services.db, Selection(message_ids=(mid,)))
    assert (changed.recipients, changed.busy) == (2, 2)
    page = await control.list_queue(w.services.db, Selection(message_ids=(mid,)))
    assert {(e.state, e.in_delivery) for e in page.entries} == {("held", True)}
    # The attempt's outcomes apply: delivered is final, a deferral stays held.
    await w.queue.record_outcomes(
        [
            w.outcome(claimed["ok@example.net"], mid, DELIVERED),
            w.outcome(claimed["later@example.net"], mid, DEFERRED, time.time() - 1),
        ]
    )
    rows = await w.rows(mid)
    assert {k: r.state for k, r in rows.items()} == {
        "ok@example.net": "delivered", "later@example.net": "held"
    }  # fmt: skip
    assert rows["later@example.net"].attempts == 1 and rows["later@example.net"].lease_until is None
    assert await w.queue.claim("w", 10, 60) == []
    assert await w.body(mid) == BODY
    await control.release(w.services.db, Selection(message_ids=(mid,)))
    assert await w.state(mid) == {"ok@example.net": "delivered", "later@example.net": "deferred"}


async def test_release_by_state_filter_and_nothing_to_release(w: World) -> None:
    mid = await w.accept(w.shop, ["a@example.net"])
    assert (await control.release(w.services.db, Selection(message_ids=(mid,)))).recipients == 0
    await control.hold(w.services.db, Selection(message_ids=(mid,)))
    assert (await control.hold(w.services.db, Selection(message_ids=(mid,)))).recipients == 0
    assert (await control.release(w.services.db, Selection(state="deferred"))).recipients == 0
    assert (await control.release(w.services.db, Selection(state="held"))).recipients == 1


async def test_clearing_a_domains_queue_fails_held_recipients_too(w: World, api: Api) -> None:
    mid = await w.accept(w.shop, ["a@example.net", "b@example.net"])
    await control.hold(w.services.db, Selection(message_ids=(mid,)))
    res = await api.call(
        "emailgateway.cleardomainqueue", APIKey=w.shop.api_key, DomainID=w.shop.domain_id
    )
    assert res["Success"] is True
    assert await w.state(mid) == {"a@example.net": "failed", "b@example.net": "failed"}
    assert await w.body(mid) is None


# -- delete --------------------------------------------------------------------------------------


async def test_delete_fails_recipients_with_an_event_and_drops_the_body(w: World) -> None:
    mid = await w.accept(w.shop, ["a@example.net", "b@example.net"])
    await control.hold(w.services.db, Selection(message_ids=(mid,)))
    await control.release(w.services.db, Selection(message_ids=(mid,)))
    other = await w.accept(w.shop, ["c@example.net"])
    await control.hold(w.services.db, Selection(message_ids=(other,)))

    changed = await control.delete(
        w.services.db, Selection(message_ids=(mid, other)), actor="cli:ops"
    )
    assert (changed.recipients, changed.messages, changed.busy) == (3, {mid: 2, other: 1}, 0)
    rows = await w.rows(mid)
    assert {r.state for r in rows.values()} == {"failed"}
    assert rows["a@example.net"].last_response == control.DELETED_REASON
    failed = [e for e in await w.events_of(mid) if e.event == events.FAILED]
    assert sorted(e.recipient for e in failed) == ["a@example.net", "b@example.net"]
    for e in failed:
        data = e.data if isinstance(e.data, dict) else json.loads(e.data)
        assert data == {"reason": "deleted", "by": "cli:ops"}
        assert (e.user_id, e.domain_id, e.smtp_response) == (
            w.shop.user_id, w.shop.domain_id, control.DELETED_REASON
        )  # fmt: skip
    assert await w.body(mid) is None and await w.body(other) is None
    assert await w.state(other) == {"c@example.net": "failed"}
    # Nothing live left: a second delete changes nothing.
    again = await control.delete(w.services.db, Selection(message_ids=(mid,)), actor="cli:ops")
    assert again.recipients == 0


async def test_delete_never_takes_a_recipient_from_under_its_delivery(w: World) -> None:
    mid = await w.accept(w.shop, ["busy@example.net"])
    idle = await w.accept(w.shop, ["idle@example.net"], not_before=time.time() + HOUR)
    (claimed,) = await w.queue.claim("w", 10, 60)
    changed = await control.delete(w.services.db, Selection(everything=True), actor="admin")
    assert (changed.recipients, changed.busy) == (1, 1)
    assert await w.state(idle) == {"idle@example.net": "failed"}
    # In delivery: held, its lease untouched, so the attempt's outcome still applies...
    row = (await w.rows(mid))["busy@example.net"]
    assert (row.state, row.lease_owner) == ("held", "w")
    await w.queue.record_outcomes([w.outcome(claimed, mid, DEFERRED, time.time() - 1)])
    # ... and a deferral is never tried again; a second delete finishes the job.
    assert await w.queue.claim("w", 10, 60) == []
    again = await control.delete(w.services.db, Selection(message_ids=(mid,)), actor="admin")
    assert (again.recipients, again.busy) == (1, 0)
    assert await w.state(mid) == {"busy@example.net": "failed"}


async def test_delete_of_a_recipient_held_and_in_delivery_waits_for_it(w: World) -> None:
    mid = await w.accept(w.shop, ["busy@example.net"])
    (claimed,) = await w.queue.claim("w", 10, 60)
    await control.hold(w.services.db, Selection(message_ids=(mid,)))
    changed = await control.delete(w.services.db, Selection(message_ids=(mid,)), actor="admin")
    assert (changed.recipients, changed.busy) == (0, 1)
    await w.queue.record_outcomes([w.outcome(claimed, mid, DELIVERED)])
    assert await w.state(mid) == {"busy@example.net": "delivered"}


async def test_changes_go_in_batches(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "BATCH", 3)
    mids = [await w.accept(w.shop, [f"r{i}a@example.net", f"r{i}b@example.net"]) for i in range(4)]
    held = await control.hold(w.services.db, Selection(everything=True))
    assert (held.recipients, len(held.messages)) == (8, 4)
    deleted = await control.delete(w.services.db, Selection(everything=True), actor="admin")
    assert deleted.recipients == 8
    for mid in mids:
        assert set((await w.state(mid)).values()) == {"failed"}
        assert len([e for e in await w.events_of(mid) if e.event == events.FAILED]) == 2


async def test_retry_and_release_wake_every_node(w: World) -> None:
    """PostgreSQL: the change NOTIFYs the queue channel in its own transaction."""
    if w.services.db.is_sqlite:
        pytest.skip("PostgreSQL only (SQLite: the node's next poll finds them)")
    woken = asyncio.Event()
    listening = asyncio.Event()
    listener = open_backend(w.services.db, "test-listen")
    task = asyncio.create_task(listener.listen(woken.set, listening))
    try:
        await asyncio.wait_for(listening.wait(), 30)
        woken.clear()
        mid = await w.accept(w.shop, ["a@example.net"])
        await asyncio.wait_for(woken.wait(), 30)  # the ingest's own NOTIFY
        await w.defer(mid, until=time.time() + HOUR)
        await control.hold(w.services.db, Selection(message_ids=(mid,)))
        woken.clear()
        await control.release(w.services.db, Selection(message_ids=(mid,)))
        await asyncio.wait_for(woken.wait(), 30)
        await control.hold(w.services.db, Selection(message_ids=(mid,)))
        await control.release(w.services.db, Selection(message_ids=(mid,)))
        await w.defer(mid, until=time.time() + HOUR)
        woken.clear()
        await control.retry(w.services.db, Selection(message_ids=(mid,)))
        await asyncio.wait_for(woken.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await listener.close()


async def test_changes_race_claims_without_taking_a_leased_recipient(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete in small batches while a worker keeps claiming: what the worker holds is never
    failed under it (held instead), everything else is failed; nothing is left pending."""
    monkeypatch.setattr(control, "BATCH", 7)
    mids = [await w.accept(w.shop, [f"r{i}@example.net" for i in range(10)]) for _ in range(30)]
    # A head start: some are surely in delivery when the delete begins; more get claimed as it
    # runs (however the two interleave, the checks below hold).
    claimed = {c.id for c in await w.queue.claim("w", 50, 300)}
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            claimed.update(c.id for c in await w.queue.claim("w", 5, 300))
            await asyncio.sleep(0)

    task = asyncio.create_task(worker())
    try:
        changed = await control.delete(w.services.db, Selection(everything=True), actor="admin")
    finally:
        stop.set()
        await task
    r = t.recipients
    async with w.services.db.read() as conn:
        rows = (await conn.execute(select(r.c.id, r.c.state))).all()
    states = {row.id: row.state for row in rows}
    assert len(states) == 300 and set(changed.messages) <= set(mids)
    failed_under_a_worker = [i for i in claimed if states[i] == "failed"]
    assert failed_under_a_worker == [], "a recipient was failed while a worker held it"
    assert {states[i] for i in claimed} == {"held"}
    assert set(states.values()) <= {"failed", "held"}
    assert changed.recipients + changed.busy == 300

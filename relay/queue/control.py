"""Changes to the queue made from the management side.

Two kinds:

- ``fail_domain_queue`` runs inside the caller's SQLAlchemy transaction: the admin API composes
  it with its repository calls (``emailgateway.cleardomainqueue``).
- The queue control of ``relay queue`` (relay/queuecli.py) and the ``queue.*`` admin commands
  (relay/admin/commands/queue.py): list, retry, hold, release, delete a selection of
  recipients (``Selection``: messages by queue id, or every recipient matching filters). Each
  runs its own short transactions on a ``Database`` (``BATCH`` recipients each), so it works
  while the relay runs, from any process, on both backends, and never takes a recipient from
  under a delivery: a recipient a worker holds right now (its lease) is not retried or deleted
  (delete holds it instead and says so), and a hold lets its attempt finish (sql.QUEUE_HOLD).

Retry and release wake the delivery workers of every node on PostgreSQL (a NOTIFY in the same
transaction); on SQLite a running node finds the recipients at its next poll
(``delivery.poll_interval``), unless the caller wakes it (the admin API does, in its node).
Every statement is in relay/queue/sql.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from relay import events
from relay.addresses import ascii_domain
from relay.queue import sql
from relay.queue.model import HELD, SHOWN_STATES, shown_state
from relay.store.db import Database

log = structlog.get_logger("relay.queue")

# Recipients per transaction: short enough that delivery workers and the group commit never
# wait long behind one (SQLite has a single writer), large enough for big queues.
BATCH = 1000
# The reason a deleted recipient's 'failed' event and last reply carry (its data: reason
# "deleted" and who deleted it).
DELETED_REASON = "Deleted from the queue by an operator"
DELETED = "deleted"
# PostgreSQL deadlock / serialization failure: a batch that meets one (a hold against an
# outcome batch touching the same recipients) is tried again.
RETRIED_SQLSTATES = ("40P01", "40001")
RETRIES = 3


class SelectionError(ValueError):
    """A selection that names nothing, or a filter value that is not valid."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which recipients: those of the messages named (queue ids), else every live one when
    ``everything`` or a filter is given; filters narrow both."""

    message_ids: tuple[str, ...] = ()
    sender_domain: str | None = None
    recipient_domain: str | None = None
    state: str | None = None  # one of model.SHOWN_STATES
    older_than: float | None = None  # seconds since acceptance
    everything: bool = False

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in SHOWN_STATES:
            raise SelectionError(f"state must be one of {', '.join(SHOWN_STATES)}")
        if self.older_than is not None and not self.older_than >= 0:
            raise SelectionError("older than must be a number of seconds, 0 or more")

    @property
    def filtered(self) -> bool:
        return any(
            v is not None
            for v in (self.sender_domain, self.recipient_domain, self.state, self.older_than)
        )

    @property
    def names_something(self) -> bool:
        """A change needs a target: message ids, ``everything``, or a filter."""
        return bool(self.message_ids) or self.everything or self.filtered

    def describe(self) -> dict[str, Any]:
        """The selection's terms, for log lines."""
        terms: dict[str, Any] = {
            "sender_domain": self.sender_domain,
            "recipient_domain": self.recipient_domain,
            "state": self.state,
            "older_than": self.older_than,
        }
        if self.message_ids:
            terms["queue_ids"] = list(self.message_ids)
        return {k: v for k, v in terms.items() if v is not None} or {"all": True}


@dataclass(slots=True)
class Entry:
    """One recipient as the queue listing shows it."""

    recipient_id: int
    queue_id: str
    recipient: str
    state: str  # shown: queued, scheduled, deferred, held
    attempts: int
    next_attempt_at: float | None  # None while held (not before it is released)
    last_code: int | None
    last_response: str
    in_delivery: bool  # a delivery worker holds it right now
    accepted_at: float
    sender: str  # envelope sender
    sender_domain: str
    size: int

    def view(self) -> dict[str, Any]:
        """As the queue.list API and ``relay queue list --json`` show it."""
        return {
            "QueueID": self.queue_id,
            "Recipient": self.recipient,
            "State": self.state,
            "Attempts": self.attempts,
            "NextAttemptAt": None if self.next_attempt_at is None else int(self.next_attempt_at),
            "LastCode": self.last_code,
            "LastResponse": self.last_response,
            "InDelivery": self.in_delivery,
            "AcceptedAt": int(self.accepted_at),
            "MailFrom": self.sender,
            "SenderDomain": self.sender_domain,
            "Size": self.size,
        }


@dataclass(slots=True)
class Page:
    entries: list[Entry]
    after: str | None  # where the next page starts (None: this was the last)


@dataclass(slots=True)
class Changed:
    """What a change did, per message (queue id -> recipients): ``messages`` changed,
    ``in_delivery`` being delivered right now (retry: left to that attempt; hold: held all
    the same; delete: held instead of deleted); ``unknown``: queue ids named that are no
    message."""

    messages: dict[str, int] = field(default_factory=dict)
    in_delivery: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    @property
    def recipients(self) -> int:
        return sum(self.messages.values())

    @property
    def busy(self) -> int:
        return sum(self.in_delivery.values())

    def view(self) -> dict[str, Any]:
        """As the admin API and ``relay queue ... --json`` answer."""
        return {
            "Recipients": self.recipients,
            "Messages": len(self.messages),
            "InDelivery": self.busy,
            "QueueIDs": sorted(self.messages),
            "Unknown": self.unknown,
        }


# The log line of each change, per message ("queue held" ...), as postsuper logs per message.
LOGGED = {"retry": "queue retried", "hold": "queue held", "release": "queue released",
          "delete": "queue deleted"}  # fmt: skip


def log_change(action: str, changed: Changed, sel: Selection, *, by: str, **context: Any) -> None:
    """The change in the log: one line per message it touched, with its queue id (so that
    ``grep <queue id>`` finds it with the message's other lines), who made it (``by``) and
    ``context`` (how: the command); one line naming the selection when it touched none."""
    event = LOGGED[action]
    for mid in sorted({*changed.messages, *changed.in_delivery}):
        log.info(
            event,
            queue_id=mid,
            recipients=changed.messages.get(mid, 0),
            in_delivery=changed.in_delivery.get(mid, 0),
            by=by,
            **context,
        )
    if not changed.messages and not changed.in_delivery:
        log.info(event, recipients=0, **sel.describe(), by=by, **context)


def _add(counts: dict[str, int], message_id: str, n: int = 1) -> None:
    counts[message_id] = counts.get(message_id, 0) + n


# -- the selection as SQL ------------------------------------------------------------------------


def _part(state: str | None) -> str:
    """The state term: one shown state, or None = every pending recipient."""
    return sql.PENDING if state is None else sql.SEL_STATE[state]


def _where(sel: Selection, first: str, *more: str) -> str:
    terms = [first, *more]
    if sel.message_ids:
        terms.append(sql.SEL_MESSAGES)
    if sel.sender_domain is not None:
        terms.append(sql.SEL_SENDER_DOMAIN)
    if sel.recipient_domain is not None:
        terms.append(sql.SEL_RECIPIENT_DOMAIN)
    if sel.older_than is not None:
        terms.append(sql.SEL_OLDER_THAN)
    return " AND ".join(terms)  # no term has a top-level OR


def _params(sel: Selection, now: float) -> dict[str, Any]:
    params: dict[str, Any] = {"now": now}
    if sel.message_ids:
        params["message_ids"] = list(sel.message_ids)
    if sel.sender_domain is not None:
        params["sender_domain"] = _domain(sel.sender_domain)
    if sel.recipient_domain is not None:
        params["recipient_domain"] = _domain(sel.recipient_domain)
    if sel.older_than is not None:
        params["created_before"] = now - sel.older_than
    return params


def _domain(name: str) -> str:
    """As domains are stored: A-labels, lower case (a name that is none matches nothing)."""
    name = name.strip()
    return ascii_domain(name) or name.lower()


def _text(statement: str, params: Mapping[str, Any]) -> TextClause:
    clause = text(statement)
    if "message_ids" in params:
        clause = clause.bindparams(bindparam("message_ids", expanding=True))
    return clause


def _pending_part(sel: Selection) -> list[str | None]:
    """The pending states an operation on every pending recipient reads: None (all of them)
    unless the selection names one state."""
    if sel.state is None:
        return [None]
    return [sel.state] if sel.state != HELD else []


# -- listing ------------------------------------------------------------------------------------


async def list_queue(
    db: Database,
    sel: Selection,
    *,
    after: str | None = None,
    limit: int = 100,
    now: float | None = None,
) -> Page:
    """A page of live recipients matching ``sel``: pending ones in next-attempt order, then
    held ones. ``after`` is the previous page's ``Page.after``."""
    now = time.time() if now is None else now
    parts: list[str | None] = [*_pending_part(sel), *([HELD] if sel.state in (None, HELD) else [])]
    start, after_at, after_id = _cursor(after)
    params = _params(sel, now)
    entries: list[Entry] = []
    async with db.read() as conn:
        for index, state in enumerate(parts):
            if index < start:
                continue
            if index > start:
                after_at, after_id = -1.0, 0
            room = limit - len(entries)
            where = _where(sel, _part(state))
            stmt = sql.QUEUE_LIST.format(where=where)
            args = {**params, "after_at": after_at, "after_id": after_id, "limit": room}
            rows = (await conn.execute(_text(stmt, args), args)).all()
            entries.extend(_entry(row, now) for row in rows)
            if len(rows) == room:
                last = entries[-1]
                at = rows[-1].next_attempt_at
                return Page(entries, f"{index}:{at!r}:{last.recipient_id}")
    return Page(entries, None)


def _cursor(after: str | None) -> tuple[int, float, int]:
    if not after:
        return 0, -1.0, 0
    try:
        part, at, rid = after.split(":")
        return int(part), float(at), int(rid)
    except ValueError:
        raise SelectionError("not a position in the queue listing") from None


def _entry(row: Any, now: float) -> Entry:
    state = shown_state(row.state, row.next_attempt_at, now)
    return Entry(
        recipient_id=int(row.id),
        queue_id=row.message_id,
        recipient=row.rcpt,
        state=state,
        attempts=int(row.attempts),
        next_attempt_at=None if state == HELD else float(row.next_attempt_at),
        last_code=row.last_code,
        last_response=row.last_response or "",
        in_delivery=row.lease_until is not None and row.lease_until >= now,
        accepted_at=float(row.created_at),
        sender=row.mail_from,
        sender_domain=row.sender_domain or "",
        size=int(row.size),
    )


# -- changes ------------------------------------------------------------------------------------


async def retry(db: Database, sel: Selection, *, now: float | None = None) -> Changed:
    """Deferred recipients waiting for a later attempt become due now (one being delivered
    right now is left to that attempt)."""
    now = time.time() if now is None else now
    changed = await _known(db, sel)
    if sel.state in (None, "deferred"):
        params = _params(sel, now)
        busy = _where(sel, sql.SEL_STATE["deferred"], sql.LEASED_NOW)
        await _count_busy(db, busy, params, changed)
        stmt = sql.QUEUE_RETRY.format(where=_where(sel, sql.RETRY_WAITING))
        await _batches(db, stmt, params, changed, notify=True)
    return changed


async def hold(db: Database, sel: Selection, *, now: float | None = None) -> Changed:
    """Pending recipients are put on hold: never claimed until released. One being delivered
    right now finishes its attempt (``in_delivery``); if that attempt does not finish it, it
    stays held."""
    now = time.time() if now is None else now
    changed = await _known(db, sel)
    for state in _pending_part(sel):
        stmt = sql.QUEUE_HOLD.format(where=_where(sel, _part(state)))
        await _batches(db, stmt, _params(sel, now), changed, leased_at=now)
    return changed


async def release(db: Database, sel: Selection, *, now: float | None = None) -> Changed:
    """Held recipients go back to the queue: never tried ones due at their time (acceptance,
    or the message's schedule), tried ones due now."""
    now = time.time() if now is None else now
    changed = await _known(db, sel)
    if sel.state in (None, HELD):
        stmt = sql.QUEUE_RELEASE.format(where=_where(sel, sql.HELD))
        await _batches(db, stmt, _params(sel, now), changed, notify=True)
    return changed


async def delete(db: Database, sel: Selection, *, actor: str, now: float | None = None) -> Changed:
    """Live recipients become ``failed``, each with a ``failed`` event (data: reason
    "deleted", ``by`` = ``actor``); bodies nobody needs any more are dropped. One being
    delivered right now is put on hold instead (``in_delivery``): its attempt finishes, and a
    second delete, once it has, deletes it unless it was delivered."""
    now = time.time() if now is None else now
    changed = await _known(db, sel)
    params = _params(sel, now)
    pending = _pending_part(sel)
    held = sel.state in (None, HELD)
    if held:
        await _count_busy(db, _where(sel, sql.HELD, sql.LEASED_NOW), params, changed)
    payload = json.dumps({"reason": DELETED, "by": actor})
    parts = [_part(s) for s in pending] + ([sql.HELD] if held else [])
    for part in parts:
        stmt = sql.QUEUE_DELETE.format(where=_where(sel, part, sql.NOT_LEASED))
        await _batches(db, stmt, {**params, "reason": DELETED_REASON}, changed, events=payload)
    # What a worker holds right now: held, so that it is not tried again after this attempt.
    for state in pending:
        stmt = sql.QUEUE_HOLD.format(where=_where(sel, _part(state), sql.LEASED_NOW))
        on_hold = Changed()
        await _batches(db, stmt, params, on_hold)
        for mid, n in on_hold.messages.items():
            _add(changed.in_delivery, mid, n)
    return changed


async def _known(db: Database, sel: Selection) -> Changed:
    """A fresh result, with the queue ids named that are no message."""
    changed = Changed()
    if sel.message_ids:
        params = {"message_ids": list(sel.message_ids)}
        async with db.read() as conn:
            rows = await conn.execute(_text(sql.QUEUE_KNOWN_MESSAGES, params), params)
            known = {r[0] for r in rows}
        changed.unknown = [m for m in sel.message_ids if m not in known]
    return changed


async def _count_busy(db: Database, where: str, params: dict[str, Any], changed: Changed) -> None:
    stmt = sql.QUEUE_BUSY.format(where=where)
    async with db.read() as conn:
        for mid, n in await conn.execute(_text(stmt, params), params):
            _add(changed.in_delivery, mid, int(n))


async def _batches(
    db: Database,
    statement: str,
    params: dict[str, Any],
    changed: Changed,
    *,
    leased_at: float | None = None,
    events: str | None = None,
    notify: bool = False,
) -> None:
    """Run a change batch after batch, each in its own transaction, until one changes fewer
    than ``BATCH`` recipients. ``leased_at``: count rows whose lease (the second column
    returned) runs at that time as in delivery. ``events``: the rows (message id, recipient)
    failed: write their 'failed' events with this data, and drop finished bodies. ``notify``:
    recipients became due: wake the delivery workers (PostgreSQL)."""
    args = {**params, "batch": BATCH}
    clause = _text(statement, args)
    notify = notify and not db.is_sqlite
    while True:
        rows = await _batch(db, clause, args, events, notify)
        for row in rows:
            _add(changed.messages, row[0])
            if leased_at is not None and row[1] is not None and row[1] >= leased_at:
                _add(changed.in_delivery, row[0])
        if len(rows) < BATCH:
            return


async def _batch(
    db: Database,
    clause: TextClause,
    args: dict[str, Any],
    events_data: str | None,
    notify: bool,
) -> list[Any]:
    for attempt in range(RETRIES + 1):
        try:
            async with db.write() as conn:
                rows = list((await conn.execute(clause, args)).all())
                if rows and events_data is not None:
                    await _record_deleted(conn, rows, args["now"], events_data)
                if rows and notify:
                    await conn.execute(text(sql.NOTIFY_QUEUE))
                return rows
        except DBAPIError as exc:
            state = getattr(exc.orig, "sqlstate", None)
            if state not in RETRIED_SQLSTATES or attempt == RETRIES:
                raise
    raise AssertionError("unreachable")


async def _record_deleted(conn: AsyncConnection, rows: list[Any], now: float, data: str) -> None:
    ids = {"message_ids": sorted({r[0] for r in rows})}
    owners = {
        r.id: (r.user_id, r.domain_id)
        for r in await conn.execute(_text(sql.QUEUE_MESSAGE_OWNERS, ids), ids)
    }
    await conn.execute(
        text(sql.INSERT_EVENT),
        [
            {
                "created_at": now,
                "user_id": owners[mid][0],
                "domain_id": owners[mid][1],
                "message_id": mid,
                "recipient": rcpt,
                "event": events.FAILED,
                "smtp_code": None,
                "smtp_response": DELETED_REASON,
                "data": data,
            }
            for mid, rcpt in rows
        ],
    )
    await conn.execute(_text(sql.DROP_FINISHED_BODIES, ids), ids)


# -- clearing a domain's queue (inside the caller's transaction) --------------------------------


@dataclass(frozen=True, slots=True)
class Failed:
    message_id: str
    rcpt: str


async def fail_domain_queue(
    conn: AsyncConnection,
    *,
    domain_id: int,
    user_id: int,
    reason: str,
    data: dict[str, Any] | None = None,
) -> list[Failed]:
    """Every pending or held recipient of the domain's messages becomes ``failed`` with a
    ``failed`` event (``smtp_response`` = ``reason``); the bodies nobody needs any more are
    dropped."""
    now = time.time()
    found = await conn.execute(
        text(sql.FAIL_DOMAIN_PENDING), {"now": now, "reason": reason, "domain_id": domain_id}
    )
    failed = [Failed(mid, rcpt) for mid, rcpt in found.all()]
    if failed:
        payload = json.dumps(data) if data is not None else None
        await conn.execute(
            text(sql.INSERT_EVENT),
            [
                {
                    "created_at": now,
                    "user_id": user_id,
                    "domain_id": domain_id,
                    "message_id": f.message_id,
                    "recipient": f.rcpt,
                    "event": events.FAILED,
                    "smtp_response": reason,
                    "smtp_code": None,
                    "data": payload,
                }
                for f in failed
            ],
        )
        await conn.execute(text(sql.DROP_DOMAIN_BODIES), {"domain_id": domain_id})
    return failed

"""The event log (001: emailgateway.getevents, GET /api/v1/events, emailgateway.aggrevents,
emailgateway.exportevents).

One event per recipient outcome, written by the SMTP side (accepted, rejected) and the
delivery side (delivered, deferred, bounced, failed, suppressed). The documents' names for
them, accepted as ``Event`` filters wherever one is taken:

EVENT_TABLE

Responses name events the way each route's document does: ``delivery``/``bounce``/... in
getevents, the v1 route and aggrevents; our own names (``delivered``/``bounced``/...) in the
CSV export. Any other event name written to the log (new kinds of events included) is shown
and counted under its own name.

The admin key reads every account: getevents, exportevents and aggrevents take
``AdminAPIKey`` with an optional ``UserID`` (omitted: every account), and
emailgateway.getmessage finds a message by queue id or Message-ID header with its recipients'
state and every event.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from typing import Any

from aiohttp import web
from sqlalchemy import Row

from relay import events
from relay.admin.dates import optional_period, period, today
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.admin.params import Params
from relay.admin.senderkey import sender_scope
from relay.message import MalformedMessage, unfold
from relay.message import parse as parse_message
from relay.queue.model import HELD, SHOWN_STATES, shown_state
from relay.store.db import storable_text
from relay.store.repos import domains as domains_repo
from relay.store.repos import events as repo
from relay.store.repos import users as users_repo

MAX_PAGE = 100
EXPORT_LIMIT = 10_000
EXPORT_CHUNK = 1_000
PUBLIC_DEFAULT_COUNT = 5


def _event_table() -> str:
    rows = ["| filter value | our events |", "|---|---|"]
    for name, ours in events.FILTERS.items():
        rows.append(f"| `{name}` | {', '.join(ours)} |")
    return "\n".join(rows)


__doc__ = (__doc__ or "").replace("EVENT_TABLE", _event_table())


def event_filter(value: str | None) -> tuple[str, ...] | None:
    """The ``Event`` parameter as our event names; None when not given."""
    if not value:
        return None
    return events.filter_names(value)


INVALID_USER = 6
INVALID_USER_TEXT = "Invalid UserID"


async def account(call: Call) -> int | None:
    """Whose events: the caller's; with the admin key the ``UserID`` given (omitted or 0:
    every account)."""
    if not call.principal.is_admin:
        return call.user_id
    try:
        user_id = call.params.int("UserID")
    except ValueError:
        raise ApiError(INVALID_USER, INVALID_USER_TEXT) from None
    if not user_id:
        return None
    async with call.services.db.read() as conn:
        if await users_repo.get(conn, user_id) is None:
            raise ApiError(INVALID_USER, INVALID_USER_TEXT)
    return user_id


async def domain_scope(call: Call, user_id: int | None, code: int, text: str) -> list[int] | None:
    """[DomainID] if one is given (0 or absent: None = every domain); ``code`` unless it is a
    live domain of ``user_id`` (None, the admin's every account: any live domain)."""
    try:
        domain_id = call.params.int("DomainID")
    except ValueError:
        raise ApiError(code, text) from None
    if not domain_id:
        return None
    async with call.services.db.read() as conn:
        if await domains_repo.get(conn, domain_id, user_id=user_id) is None:
            raise ApiError(code, text)
    return [domain_id]


async def message_ids(call: Call, value: str | None) -> list[str] | None:
    """The queue ids a MessageID parameter names (a queue id or a Message-ID header)."""
    if not value:
        return None
    async with call.services.db.read() as conn:
        return await repo.message_ids_for(conn, value)


def _page(
    p: Params, *, required: bool, default_count: int, texts: tuple[str, str], status: int = 200
) -> tuple[int, int]:
    """(StartFrom, RetrieveCount); RetrieveCount is capped at 100. A value that is not a
    whole number (or is negative, or a count below 1) counts as missing."""
    start_error = ApiError(4, texts[0], status=status)
    count_error = ApiError(5, texts[1], status=status)
    if required and not p.present("StartFrom"):
        raise start_error
    try:
        start = p.int("StartFrom") or 0
    except ValueError:
        start = -1
    if start < 0:
        raise start_error
    if required and not p.present("RetrieveCount"):
        raise count_error
    try:
        count = p.int("RetrieveCount")
    except ValueError:
        count = -1
    count = default_count if count is None else count
    if count < 1:
        raise count_error
    return start, min(count, MAX_PAGE)


def attempt_of(row: Row) -> tuple[int | None, int | None]:
    """(attempt number, next attempt as Unix time) a delivery event recorded, else None."""
    data = row.data if isinstance(row.data, dict) else {}
    attempt, next_at = data.get("attempt"), data.get("next_attempt_at")
    return (
        attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        int(next_at)
        if isinstance(next_at, int | float) and not isinstance(next_at, bool)
        else None,
    )


def internal_event(row: Row, *, with_user: bool = False) -> dict[str, Any]:
    attempt, next_at = attempt_of(row)
    item: dict[str, Any] = {
        "event": events.internal_name(row.event),
        "timestamp": int(row.created_at),
        "id": row.id,
    }
    if with_user:
        item["user-id"] = row.user_id
    return item | {
        "domain-id": row.domain_id,
        "recipient": row.recipient,
        "message": {
            "id": row.message_id,
            "headers": {
                "from": row.header_from or row.mail_from or "",
                "to": row.recipient or "",
                "subject": row.subject or "",
                "message-id": row.message_id_header or "",
            },
        },
        "delivery-status": {
            "code": row.smtp_code,
            "message": row.smtp_response or "",
            "attempt": attempt,
            "next-attempt-at": next_at,
        },
    }


def public_event(row: Row) -> dict[str, Any]:
    attempt, next_at = attempt_of(row)
    return {
        "Event": events.internal_name(row.event),
        "LoggedAt": int(row.created_at),
        "EventID": row.id,
        "MessageID": row.message_id,
        "Recipient": row.recipient,
        "Message": {
            "Headers": {
                "From": row.header_from or row.mail_from or "",
                "To": row.recipient or "",
                "Subject": row.subject or "",
                "MessageID": row.message_id_header or "",
            }
        },
        "DeliveryStatus": {
            "Code": row.smtp_code,
            "Message": row.smtp_response or "",
            "Attempt": attempt,
            "NextAttemptAt": next_at,
        },
    }


@command("emailgateway.getevents", auth="user_or_admin")
async def get_events(call: Call) -> dict[str, Any]:
    """One page of the caller's events, newest first: of one sender domain (DomainID) or of
    all of them. ``delivery-status`` carries the SMTP reply and, for delivery attempts, the
    attempt number and (deferred) the Unix time of the next attempt (null otherwise). With
    the admin key: the events of the account ``UserID``, or of every account (each event
    then also names its ``user-id``).

    Parameters:
        UserID (Integer): admin key only: the account; omitted or 0: every account.
        DomainID (Integer): one sender domain; omitted or 0: every domain of the caller.
        StartFrom (Integer, required): offset of the first event.
        RetrieveCount (Integer, required): events per page, at most 100.
        StartDate (String): first day (Y-m-d, UTC).
        EndDate (String): last day (Y-m-d, UTC).
        Event (String): an event name in any of the spellings above.
        Query (String): text to find in addresses, subject, message ids, SMTP response or
            client IP.
        MessageID (String): one message: its queue id or its Message-ID header (takes
            precedence over Query).

    Errors:
        0: Success
        2: Domain not found or access denied (only when DomainID is supplied)
        4: Missing required parameter (StartFrom)
        5: Missing required parameter (RetrieveCount)
        6: Invalid UserID (admin key only)
    """
    p = call.params
    start, count = _page(
        p,
        required=True,
        default_count=MAX_PAGE,
        texts=(
            "Missing required parameter (StartFrom)",
            "Missing required parameter (RetrieveCount)",
        ),
    )
    user_id = await account(call)
    domain_ids = await domain_scope(call, user_id, 2, "Domain not found or access denied")
    since, until = optional_period(p)
    q = repo.EventQuery(
        user_id=user_id,
        domain_ids=domain_ids,
        since=since,
        until=until,
        events=event_filter(p.str("Event")),
        message_ids=await message_ids(call, p.str("MessageID")),
        text=p.str("Query"),
    )
    async with call.services.db.read() as conn:
        total, rows = await repo.search(conn, q, start, count)
    admin = call.principal.is_admin
    return ok(TotalRecords=total, Events=[internal_event(r, with_user=admin) for r in rows])


def _timestamp(value: str | None) -> float | None:
    """A Unix timestamp, or (002) "YYYY-MM-DD HH:MM:SS" UTC; None if neither."""
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        parsed = dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.UTC).timestamp()


@command(
    "emailgateway.getevents.public",
    auth="sender_key",
    style="v1",
    rate_limited=True,
    routes=(("GET", "/api/v1/events"),),
    missing_key=1,
)
async def get_events_public(call: Call) -> dict[str, Any]:
    """One page of the events of the API key's sender domain, newest first.
    ``DeliveryStatus`` carries the SMTP reply and, for delivery attempts, the attempt number
    and (deferred) the Unix time of the next attempt (null otherwise).

    Parameters:
        SenderAPIKey (String, required): the sender domain's API key, as a Bearer token.
        StartFrom (Integer): offset of the first event (default 0).
        RetrieveCount (Integer): events per page (default 5, at most 100).
        StartDate (Integer): from this Unix timestamp on (or "YYYY-MM-DD HH:MM:SS" UTC).
        EndDate (Integer): up to this Unix timestamp (inclusive).
        Event (String): an event name in any of the spellings above.
        MessageID (String): one message: its MessageID or its Message-ID header.

    Errors:
        1: Missing SenderAPIKey
        2: Invalid sender domain
        4: Missing StartFrom
        5: Missing RetrieveCount
        13: Invalid SenderAPIKey
        429: Too many requests
    """
    p = call.params
    start, count = _page(
        p,
        required=False,
        default_count=PUBLIC_DEFAULT_COUNT,
        texts=("Missing StartFrom", "Missing RetrieveCount"),
        status=400,
    )
    scope = await sender_scope(call, ApiError(2, "Invalid sender domain", status=403))
    since = _timestamp(p.str("StartDate"))
    until = _timestamp(p.str("EndDate"))
    q = repo.EventQuery(
        user_id=scope.user.id,
        domain_ids=[scope.domain.id],
        since=since,
        until=until + 1 if until is not None else None,
        events=event_filter(p.str("Event")),
        message_ids=await message_ids(call, p.str("MessageID")),
    )
    async with call.services.db.read() as conn:
        total, rows = await repo.search(conn, q, start, count)
    return {"TotalRecords": total, "Events": [public_event(r) for r in rows]}


# AggregatedField spellings -> the fields repo.buckets knows.
AGG_FIELDS = {
    "event": "event",
    "eventtype": "event",
    "event_type": "event",
    "event-type": "event",
    "type": "event",
    "recipient-domain": "recipient-domain",
    "recipientdomain": "recipient-domain",
    "to-domain": "recipient-domain",
    "message.to-domain": "recipient-domain",
    "recipient": "recipient",
    "to": "recipient",
    "smtp-code": "smtp-code",
    "smtpcode": "smtp-code",
    "delivery-status.code": "smtp-code",
    "message-id": "message-id",
    "messageid": "message-id",
}


@command("emailgateway.aggrevents", auth="user_or_admin")
async def aggr_events(call: Call) -> dict[str, Any]:
    """Counts of a sender domain's events grouped by one field, most frequent first. With the
    admin key any account's domain (``UserID``, when given, must own it).

    Parameters:
        UserID (Integer): admin key only: the account that owns DomainID.
        DomainID (Integer, required): the sender domain.
        StartDate (String): first day (Y-m-d, UTC).
        EndDate (String): last day (Y-m-d, UTC).
        AggregatedField (String): event (default; also eventType), recipient-domain,
            recipient, smtp-code or message-id. Any other value means event.
        AggregateSize (Integer): number of buckets, default 10, 1 to 1000.

    Errors:
        0: Success
        1: Missing required parameter (DomainID)
        2: Domain not found or access denied
        6: Invalid UserID (admin key only)
    """
    p = call.params
    if not p.present("DomainID"):
        raise ApiError(1, "Missing required parameter (DomainID)")
    user_id = await account(call)
    domain_ids = await domain_scope(call, user_id, 2, "Domain not found or access denied")
    if domain_ids is None:
        raise ApiError(2, "Domain not found or access denied")
    field = AGG_FIELDS.get((p.str("AggregatedField") or "event").lower(), "event")
    try:
        size = p.int("AggregateSize") or 10
    except ValueError:
        size = 10
    size = max(1, min(size, 1000))
    since, until = optional_period(p)
    q = repo.EventQuery(user_id=user_id, domain_ids=domain_ids, since=since, until=until)
    async with call.services.db.read() as conn:
        found = await repo.buckets(conn, q, field, size)
    return ok(
        AggBuckets=[
            {"key": events.internal_name(key) if field == "event" else key, "doc_count": n}
            for key, n in found
        ]
    )


CSV_COLUMNS = (
    "Time",
    "Event",
    "MessageID",
    "From",
    "To",
    "Subject",
    "Domain",
    "SMTPCode",
    "SMTPResponse",
    "Attempt",
    "NextAttemptAt",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> str:
    """A cell a spreadsheet shows as text: leading =, +, -, @, tab or CR get a quote (OWASP
    "CSV injection")."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def iso(ts: float) -> str:
    """ISO 8601 UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def csv_row(row: Row) -> list[str]:
    recipient = row.recipient or ""
    attempt, next_at = attempt_of(row)
    return [
        iso(row.created_at),
        row.event,
        csv_safe(row.message_id),
        csv_safe(row.header_from or row.mail_from),
        csv_safe(recipient),
        csv_safe(row.subject),
        csv_safe(recipient.rpartition("@")[2].lower()),
        "" if row.smtp_code is None else str(row.smtp_code),
        csv_safe(row.smtp_response),
        "" if attempt is None else str(attempt),
        "" if next_at is None else iso(next_at),
    ]


def _encode(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8")


@command("emailgateway.exportevents", auth="user_or_admin")
async def export_events(call: Call) -> web.StreamResponse:
    """Stream the caller's events as CSV (``text/csv``, not JSON), newest first, at most
    10,000 rows, fetched and sent 1,000 at a time. The file starts with a UTF-8 BOM;
    columns: Time (ISO 8601 UTC), Event, MessageID, From, To, Subject, Domain (the
    recipient's), SMTPCode, then SMTPResponse (the whole reply line), Attempt (the delivery
    attempt's number) and NextAttemptAt (ISO 8601 UTC, deferred events). Cells starting with
    =, +, -, @, tab or CR get a leading quote so a spreadsheet does not run them as formulas.
    Headers: ``X-Octeth-Export-Total`` (matching events) and, when that is over 10,000,
    ``X-Octeth-Export-Truncated: 1`` and ``X-Octeth-Export-Limit: 10000``. Works as GET (a
    download link) or POST. With the admin key: the events of the account ``UserID``, or of
    every account.

    Parameters:
        UserID (Integer): admin key only: the account; omitted or 0: every account.
        DomainID (Integer): one sender domain; omitted or 0: every domain of the caller.
        Event (String): an event name in any of the spellings above.
        MessageID (String): one message, by queue id or Message-ID header (takes precedence
            over Query).
        Query (String): text to find in addresses, subject, message ids, SMTP response.
        StartDate (String): first day (Y-m-d strict; default 30 days ago).
        EndDate (String): last day (Y-m-d strict; default today; not before StartDate).

    Errors:
        0: Success (CSV streamed)
        2: DomainID supplied but not owned by the caller
        6: Invalid UserID (admin key only)
    """
    p = call.params
    user_id = await account(call)
    domain_ids = await domain_scope(
        call, user_id, 2, "DomainID supplied but not owned by the caller"
    )
    span = period(p, 30)
    q = repo.EventQuery(
        user_id=user_id,
        domain_ids=domain_ids,
        since=span.since,
        until=span.until,
        events=event_filter(p.str("Event")),
        message_ids=await message_ids(call, p.str("MessageID")),
        text=p.str("Query"),
    )
    services = call.services
    resp = web.StreamResponse(
        headers={
            "Content-Disposition": (
                f'attachment; filename="transactional-events-{today().isoformat()}.csv"'
            ),
            "Cache-Control": "no-store",
        }
    )
    resp.content_type = "text/csv"
    resp.charset = "utf-8"
    async with services.db.read() as conn:
        total = await repo.count(conn, q)
        resp.headers["X-Octeth-Export-Total"] = str(total)
        if total > EXPORT_LIMIT:
            resp.headers["X-Octeth-Export-Truncated"] = "1"
            resp.headers["X-Octeth-Export-Limit"] = str(EXPORT_LIMIT)
        try:
            await resp.prepare(call.request)
            await resp.write(b"\xef\xbb\xbf" + _encode([list(CSV_COLUMNS)]))
            async for rows in repo.chunks(conn, q, EXPORT_LIMIT, EXPORT_CHUNK):
                # Each chunk goes out before the next query: a closed tab stops the export.
                await resp.write(_encode([csv_row(r) for r in rows]))
            await resp.write_eof()
        except ConnectionResetError:
            pass
    return resp


MESSAGE_LIMIT = 20


def message_view(
    m: Row, recipients: list[Row], evs: list[Row], with_user: bool, now: float | None = None
) -> dict[str, Any]:
    """A message as emailgateway.getmessage (and ``relay queue show --json``) shows it."""
    now = time.time() if now is None else now
    mine = [r for r in recipients if r.message_id == m.id]
    return {
        "MessageID": m.id,
        "UserID": m.user_id,
        "DomainID": m.domain_id,
        "SenderDomain": m.domain_name or "",
        "Source": m.source,
        "MailFrom": m.mail_from,
        "From": m.header_from,
        "Subject": m.subject,
        "MessageIDHeader": m.message_id_header,
        "ClientIP": m.client_ip,
        "Size": m.size,
        "CreatedAt": int(m.created_at),
        "ScheduledAt": int(m.not_before) if m.not_before is not None else None,
        "Headers": _headers(m.body or next((r.body for r in mine if r.body), None)),
        "Recipients": [_recipient(r, now) for r in mine],
        "Events": [
            internal_event(e, with_user=with_user) | {"data": e.data or {}}
            for e in evs
            if e.message_id == m.id
        ],
    }


def _recipient(r: Row, now: float) -> dict[str, Any]:
    state = shown_state(r.state, r.next_attempt_at, now)
    waiting = state in SHOWN_STATES and state != HELD
    return {
        "Recipient": r.rcpt,
        "State": state,
        "Attempts": r.attempts,
        "NextAttemptAt": int(r.next_attempt_at) if waiting else None,
        "LastCode": r.last_code,
        "LastResponse": r.last_response or "",
        "UpdatedAt": int(r.updated_at),
    }


def _headers(body: bytes | None) -> list[dict[str, str]]:
    """The stored message's header fields, unfolded (none once no recipient needs the body)."""
    if not body:
        return []
    try:
        parsed = parse_message(body)
    except MalformedMessage:
        return []
    return [
        {"Name": name.decode("ascii", "replace"), "Value": storable_text(unfold(value)) or ""}
        for name, value in parsed.headers
    ]


@command("emailgateway.getmessage", auth="user_or_admin")
async def get_message(call: Call) -> dict[str, Any]:
    """Trace a message: find it by its queue id (the id in ``250 2.0.0 Ok: queued as <id>``,
    the events' MessageID) or by its Message-ID header, and show its envelope and headers,
    each recipient's state (queued, scheduled, deferred, held, delivered, bounced, failed)
    with the number of delivery attempts so far, the time of the next one (Unix time, while
    queued, scheduled or deferred) and the last reply, and every event of the message,
    oldest first, with its details (``data``: the delivery server, the attempt, a reason). A
    Message-ID header can name several messages: at most 20 are returned, newest first.
    Users see their own messages; the admin key sees every account's (``UserID``
    narrows it to one). This is the API's ``relay queue show``.

    ``Headers`` lists the header fields of the message as the relay hands it on (its own
    DKIM-Signature and Received fields first) while any recipient still waits for it; once
    every recipient is final the content is no longer stored and the list is empty
    (``From``, ``Subject`` and ``MessageIDHeader`` stay). ``ScheduledAt``: the time a
    scheduled message is sent at (Unix time), else null.

    Parameters:
        MessageID (String, required): a queue id or a Message-ID header (with or without
            the angle brackets).
        UserID (Integer): admin key only: only this account's messages.

    Errors:
        0: Success
        1: Missing required parameter (MessageID)
        2: Message not found
        6: Invalid UserID (admin key only)
    """
    ref = call.params.str("MessageID")
    if not ref:
        raise ApiError(1, "Missing required parameter (MessageID)")
    user_id = await account(call)
    async with call.services.db.read() as conn:
        found = await repo.find_messages(conn, ref, user_id, MESSAGE_LIMIT)
        if not found:
            raise ApiError(2, "Message not found")
        ids = [m.id for m in found]
        recipients = await repo.recipients_of(conn, ids)
        evs = await repo.events_of(conn, ids)
    admin = call.principal.is_admin
    return ok(Messages=[message_view(m, recipients, evs, admin) for m in found])

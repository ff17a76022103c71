"""Statistics over the event log (001: emailgateway.domainstats, accountstats,
recipientdomainstats, listrecipientdomains).

What the counts mean, in our event names (see the event table above). "Once per recipient"
means the first such event of a message's recipient counts and later ones do not (a second
open, a bounce reported twice); opens and clicks flagged as made by machines (``data.machine``,
link scanners and prefetchers) do not count at all (docs/events.md "Counting"):

- Sent: ``accepted`` (the relay queued the recipient; the documents' accepted-by-oempro);
- Delivered: ``delivered`` (a delivery server answered 2xx; accepted-by-mta) or
  ``accepted-by-mta`` (PowerMTA's accounting says the recipient's server took it), once per
  recipient;
- Bounced: ``bounced`` (rejected-by-mta), once per recipient;
- Opened, Clicked: ``opened``, ``clicked``, once per recipient (unique opens and clicks);
- Failed (recipient-domain statistics): ``bounced`` (once per recipient), ``rejected`` (refused
  by the relay's policy at RCPT; rejected-by-oempro) and ``failed`` (given up after the maximum
  age, or cleared from the queue);
- Sending: accepted but neither delivered nor failed yet (never below 0);
- rates: percent of Sent, two decimals, 0 when nothing was sent;
- delivery time: the SMTP session seconds the delivery side records with the event
  (``data.seconds``), else the seconds from acceptance to the event.

Periods are whole UTC days; StartDate/EndDate are ``Y-m-d``, invalid values fall back to the
default, EndDate is clamped to be no earlier than StartDate.
"""

from __future__ import annotations

from typing import Any

from relay import events
from relay.admin.dates import Period, period
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.admin.gateway_domain import owned_domain
from relay.store.eventlog import KINDS, day_of
from relay.store.repos import events as repo

# The events that say a recipient's server took the message (counted once per recipient).
DELIVERED_EVENTS = tuple(event for event, kind in KINDS.items() if kind == "delivered")
COUNTED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Sent", events.SENT_CLASS),
    ("Delivered", DELIVERED_EVENTS),
    ("Bounced", (events.BOUNCED,)),
    ("Opened", (events.OPENED,)),
    ("Clicked", (events.CLICKED,)),
)
COUNTED_EVENTS = tuple(e for _, names in COUNTED for e in names)
RATES = (
    ("DeliveryRate", "Delivered"),
    ("OpenRate", "Opened"),
    ("ClickRate", "Clicked"),
    ("BounceRate", "Bounced"),
)


def rate(part: int, sent: int) -> float:
    return round(part * 100.0 / sent, 2) if sent else 0.0


def with_rates(
    counts: dict[str, int], order: tuple[tuple[str, str], ...] = RATES
) -> dict[str, Any]:
    out: dict[str, Any] = dict(counts)
    for name, part in order:
        out[name] = rate(counts[part], counts["Sent"])
    return out


def _counts(found: dict[tuple[Any, ...], repo.Tally], domain_ids: list[int]) -> dict[str, int]:
    return {
        name: sum(found[(d, e)].uniq for d in domain_ids for e in names if (d, e) in found)
        for name, names in COUNTED
    }


async def _owned(call: Call, missing: str) -> int:
    try:
        domain_id = call.params.int("DomainID")
    except ValueError:
        raise ApiError(2, "Domain not found or access denied") from None
    if domain_id is None:
        raise ApiError(1, missing)
    async with call.services.db.read() as conn:
        await owned_domain(conn, call, domain_id, 2, "Domain not found or access denied")
    return domain_id


async def _found(call: Call, domain_ids: list[int], span: Period) -> dict[Any, repo.Tally]:
    q = repo.EventQuery(call.user_id, domain_ids, span.since, span.until, COUNTED_EVENTS)
    async with call.services.db.read() as conn:
        return await repo.tally(conn, q, ("domain_id", "event"))


async def _domain_counts(call: Call, domain_ids: list[int], span: Period) -> dict[str, int]:
    return _counts(await _found(call, domain_ids, span), domain_ids)


@command("emailgateway.domainstats", auth="user")
async def domain_stats(call: Call) -> dict[str, Any]:
    """A sender domain's counts over a period, the same counts over the period of the same
    length just before it, and Sent/Delivered per tag given with the send API's ``Tags``.
    Opened and Clicked are unique opens and clicks (once per recipient).

    Parameters:
        DomainID (Integer, required): the sender domain.
        StartDate (String): first day (Y-m-d, default 28 days ago).
        EndDate (String): last day (Y-m-d, default today).

    Errors:
        0: Success
        1: Missing required parameter (DomainID)
        2: Domain not found or access denied
    """
    domain_id = await _owned(call, "Missing required parameter (DomainID)")
    span = period(call.params, 28)
    stats = await _domain_counts(call, [domain_id], span)
    previous = await _domain_counts(call, [domain_id], span.previous())
    async with call.services.db.read() as conn:
        found = await repo.tag_counts(
            conn,
            domain_id,
            day_of(span.since),
            day_of(span.until),
            (*events.SENT_CLASS, *DELIVERED_EVENTS),
        )
    tags: dict[str, dict[str, int]] = {}
    for (tag, event), n in found.items():
        name = "Delivered" if event in DELIVERED_EVENTS else "Sent"
        counts = tags.setdefault(tag, {"Sent": 0, "Delivered": 0})
        counts[name] += n
    return ok(
        StartDate=span.start_text(),
        EndDate=span.end_text(),
        Stats=stats,
        ComparisonStats={"PreviousPeriod": previous},
        TagStats={tag: c for tag, c in sorted(tags.items()) if c["Sent"] or c["Delivered"]},
    )


@command("emailgateway.accountstats", auth="user")
async def account_stats(call: Call) -> dict[str, Any]:
    """Counts and rates across the caller's sender domains in one call: totals, the totals of
    the period of the same length ending the second before StartDate, and one row per domain
    (zero-filled, ordered by Sent descending, then DomainID). Opened and Clicked are unique
    opens and clicks (once per recipient).

    Parameters:
        StartDate (String): first day (Y-m-d, default 30 days ago).
        EndDate (String): last day (Y-m-d, default today; not before StartDate).
        DomainIDs (String): comma-separated sender domain IDs to include; IDs the caller does
            not own are ignored. Omitted: every domain of the caller.

    Errors:
        0: Success
        99998: Authentication failure or session expired
    """
    p = call.params
    span = period(p, 30)
    async with call.services.db.read() as conn:
        domains = await repo.live_domains(conn, call.user_id)
    if p.present("DomainIDs"):
        wanted = set(p.int_list("DomainIDs"))
        domains = [d for d in domains if d.id in wanted]
    ids = [d.id for d in domains]
    found = await _found(call, ids, span)
    found_prev = await _found(call, ids, span.previous())
    per_domain_order = (
        ("DeliveryRate", "Delivered"),
        ("BounceRate", "Bounced"),
        ("OpenRate", "Opened"),
        ("ClickRate", "Clicked"),
    )
    rows = [
        {"DomainID": d.id, "SenderDomain": d.name}
        | with_rates(_counts(found, [d.id]), per_domain_order)
        for d in domains
    ]
    rows.sort(key=lambda r: (-r["Sent"], r["DomainID"]))
    return ok(
        StartDate=span.start_text(),
        EndDate=span.end_text(),
        Totals=with_rates(_counts(found, ids)),
        ComparisonTotals=with_rates(_counts(found_prev, ids)),
        PerDomain=rows,
    )


# The statuses of the recipient-domain statistics and their rollup classes.
SENT_FAILED = {"Sent": "sent", "Failed": "failed"}


@command("emailgateway.recipientdomainstats", auth="user")
async def recipient_domain_stats(call: Call) -> dict[str, Any]:
    """Delivery outcomes and speed for one recipient domain (e.g. gmail.com) of a sender
    domain: per status (Sent = delivered, Failed = bounced, refused or given up) the count and
    delivery seconds, and a histogram of delivery times.

    Parameters:
        DomainID (Integer, required): the sender domain (ownership is checked).
        RecipientToDomain (String, required): the recipient domain, e.g. gmail.com.
        StartDate (String): first day (Y-m-d, default 28 days ago).
        EndDate (String): last day (Y-m-d, default today).

    Errors:
        0: Success
        1: Missing required parameter (DomainID or RecipientToDomain)
        2: Domain not found or access denied
    """
    p = call.params
    missing = "Missing required parameter (DomainID or RecipientToDomain)"
    rdomain = (p.str("RecipientToDomain") or "").lower().lstrip("@")
    if not rdomain:
        raise ApiError(1, missing)
    domain_id = await _owned(call, missing)
    span = period(p, 28)
    async with call.services.db.read() as conn:
        found = await repo.recipient_domains(
            conn, domain_id, day_of(span.since), day_of(span.until), rcpt_domain=rdomain
        )
    counts = found.get(rdomain, repo.RcptDomain())
    summary = []
    speeds: dict[str, list[dict[str, Any]]] = {}
    for status, klass in SENT_FAILED.items():
        row: repo.Timing = getattr(counts, klass)
        if not row.total:
            continue
        avg = row.avg
        summary.append(
            {
                "Status": status,
                "TotalEmails": row.total,
                "AvgDeliverySeconds": round(avg, 2) if avg is not None else None,
                "MinDeliverySeconds": round(row.min) if row.min is not None else None,
                "MaxDeliverySeconds": round(row.max) if row.max is not None else None,
            }
        )
        if row.timed:
            speeds[status] = [
                {
                    "DeliveryBucket": repo.SPEED_BUCKETS[i][0],
                    "EmailCount": n,
                    "Percentage": rate(n, row.timed),
                }
                for i, n in enumerate(row.histogram)
                if n
            ]
    return ok(SummaryStats=summary, DeliverySpeedHistogram=speeds)


@command("emailgateway.listrecipientdomains", auth="user")
async def list_recipient_domains(call: Call) -> dict[str, Any]:
    """The recipient domains a sender domain sent to over a period, by Sent descending:
    Sent (delivered), Failed (bounced, refused or given up), Sending (accepted, not yet
    final) and the delivery seconds of the delivered ones (null when none).

    Parameters:
        DomainID (Integer, required): the sender domain; must be owned by the caller.
        StartDate (String): first day (Y-m-d strict, default 30 days ago).
        EndDate (String): last day (Y-m-d strict, default today; not before StartDate).
        Limit (Integer): rows, default 50, clamped to 1..1000.

    Errors:
        0: Success
        1: Missing required parameter (DomainID)
        2: Domain not found or not owned by the caller
    """
    p = call.params
    try:
        domain_id = await _owned(call, "Missing required parameter (DomainID)")
    except ApiError as err:
        if err.code == 2:
            raise ApiError(2, "Domain not found or not owned by the caller") from None
        raise
    span = period(p, 30)
    try:
        limit = p.int("Limit")
    except ValueError:
        limit = None
    limit = max(1, min(50 if limit is None else limit, 1000))
    async with call.services.db.read() as conn:
        found = await repo.recipient_domains(
            conn, domain_id, day_of(span.since), day_of(span.until), detail=False
        )

    def seconds(value: float | None) -> float | None:
        return round(value, 2) if value is not None else None

    rows: list[dict[str, Any]] = []
    for rdomain, counts in found.items():
        if not rdomain:
            continue
        sent = counts.sent
        n_sent, n_failed = sent.total, counts.failed.total
        if not (n_sent or n_failed or counts.accepted):
            continue
        rows.append(
            {
                "Domain": rdomain,
                "Sent": n_sent,
                "Failed": n_failed,
                "Sending": max(counts.accepted - n_sent - n_failed, 0),
                "AvgDeliverySec": seconds(sent.avg) if n_sent else None,
                "MinDeliverySec": seconds(sent.min) if n_sent else None,
                "MaxDeliverySec": seconds(sent.max) if n_sent else None,
            }
        )
    rows.sort(key=lambda r: (-r["Sent"], r["Domain"]))
    return ok(
        StartDate=span.start_text(),
        EndDate=span.end_text(),
        Limit=limit,
        RecipientDomains=rows[:limit],
    )

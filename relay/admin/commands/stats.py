"""Statistics over the event log (001: emailgateway.domainstats, accountstats,
recipientdomainstats, listrecipientdomains).

What the counts mean, in our event names (see the event table above):

- Sent: ``accepted`` (the relay queued the recipient; the documents' accepted-by-oempro);
- Delivered: ``delivered`` (a delivery server answered 2xx; accepted-by-mta);
- Bounced: ``bounced`` (a delivery server answered 5xx; rejected-by-mta);
- Failed (recipient-domain statistics): ``bounced``, ``rejected`` (refused by the relay's
  policy at RCPT; rejected-by-oempro) and ``failed`` (given up after the maximum age, or
  cleared from the queue);
- Sending: accepted but neither delivered nor failed yet (never below 0);
- Opened, Clicked: ``opened``, ``clicked`` (not recorded by this relay yet: 0);
- rates: percent of Sent, two decimals, 0 when nothing was sent;
- delivery time: the SMTP session seconds the delivery side records with a delivered event
  (``data.seconds`` of delivered events), else the seconds from acceptance to the outcome.

Periods are whole UTC days; StartDate/EndDate are ``Y-m-d``, invalid values fall back to the
default, EndDate is clamped to be no earlier than StartDate.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from relay import events
from relay.admin.commands.domains import owned_domain
from relay.admin.dates import Period, period
from relay.admin.dispatcher import Call, command, ok
from relay.admin.errors import ApiError
from relay.store.repos import events as repo

COUNTED = (
    ("Sent", events.ACCEPTED),
    ("Delivered", events.DELIVERED),
    ("Bounced", events.BOUNCED),
    ("Opened", events.OPENED),
    ("Clicked", events.CLICKED),
)
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


def _counts(found: dict[tuple[int, str], int], domain_ids: list[int]) -> dict[str, int]:
    return {name: sum(found.get((d, event), 0) for d in domain_ids) for name, event in COUNTED}


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


async def _domain_counts(call: Call, domain_ids: list[int], span: Period) -> dict[str, int]:
    q = repo.EventQuery(call.user_id, domain_ids, span.since, span.until)
    async with call.services.db.read() as conn:
        found = await repo.counts_by_domain(conn, q)
    return _counts(found, domain_ids)


@command("emailgateway.domainstats", auth="user")
async def domain_stats(call: Call) -> dict[str, Any]:
    """A sender domain's counts over a period, the same counts over the period of the same
    length just before it, and Sent/Delivered per tag given with the send API's ``Tags``.

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
    q = repo.EventQuery(call.user_id, [domain_id], span.since, span.until)
    tags: dict[str, Counter[str]] = {}
    async with call.services.db.read() as conn:
        for name, event in (("Sent", events.ACCEPTED), ("Delivered", events.DELIVERED)):
            async for names in repo.tagged(conn, q, event):
                for tag in set(names):
                    tags.setdefault(tag, Counter())[name] += 1
    return ok(
        StartDate=span.start_text(),
        EndDate=span.end_text(),
        Stats=stats,
        ComparisonStats={"PreviousPeriod": previous},
        TagStats={
            tag: {"Sent": c["Sent"], "Delivered": c["Delivered"]} for tag, c in sorted(tags.items())
        },
    )


@command("emailgateway.accountstats", auth="user")
async def account_stats(call: Call) -> dict[str, Any]:
    """Counts and rates across the caller's sender domains in one call: totals, the totals of
    the period of the same length ending the second before StartDate, and one row per domain
    (zero-filled, ordered by Sent descending, then DomainID).

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
    q = repo.EventQuery(call.user_id, ids, span.since, span.until)
    prev = span.previous()
    q_prev = repo.EventQuery(call.user_id, ids, prev.since, prev.until)
    async with call.services.db.read() as conn:
        found = await repo.counts_by_domain(conn, q)
        found_prev = await repo.counts_by_domain(conn, q_prev)
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


SENT_FAILED = {"Sent": events.DELIVERED_CLASS, "Failed": events.FAILED_CLASS}


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
    q = repo.EventQuery(call.user_id, [domain_id], span.since, span.until, recipient_domain=rdomain)
    async with call.services.db.read() as conn:
        found = {row.group: row for _, row in await repo.timings(conn, q, SENT_FAILED)}
        histogram = await repo.speed_histogram(conn, q, SENT_FAILED)
    summary = []
    for status in SENT_FAILED:
        row = found.get(status)
        if row is None:
            continue
        summary.append(
            {
                "Status": status,
                "TotalEmails": row.total,
                "AvgDeliverySeconds": round(row.avg, 2) if row.avg is not None else None,
                "MinDeliverySeconds": round(row.min) if row.min is not None else None,
                "MaxDeliverySeconds": round(row.max) if row.max is not None else None,
            }
        )
    speeds: dict[str, list[dict[str, Any]]] = {}
    for status, buckets in histogram.items():
        timed = sum(n for _, n in buckets)
        speeds[status] = [
            {
                "DeliveryBucket": repo.SPEED_BUCKETS[i][0],
                "EmailCount": n,
                "Percentage": rate(n, timed),
            }
            for i, n in buckets
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
    groups = {**SENT_FAILED, "Accepted": (events.ACCEPTED,)}
    q = repo.EventQuery(call.user_id, [domain_id], span.since, span.until)
    async with call.services.db.read() as conn:
        found = await repo.timings(conn, q, groups, by_recipient_domain=True)
    per: dict[str, dict[str, repo.TimingRow]] = {}
    for rdomain, row in found:
        if rdomain:
            per.setdefault(rdomain, {})[row.group] = row

    def total(by: dict[str, repo.TimingRow], group: str) -> int:
        return by[group].total if group in by else 0

    def seconds(value: float | None) -> float | None:
        return round(value, 2) if value is not None else None

    rows: list[dict[str, Any]] = []
    for rdomain, by in per.items():
        sent = by.get("Sent")
        n_sent, n_failed = total(by, "Sent"), total(by, "Failed")
        rows.append(
            {
                "Domain": rdomain,
                "Sent": n_sent,
                "Failed": n_failed,
                "Sending": max(total(by, "Accepted") - n_sent - n_failed, 0),
                "AvgDeliverySec": seconds(sent.avg) if sent else None,
                "MinDeliverySec": seconds(sent.min) if sent else None,
                "MaxDeliverySec": seconds(sent.max) if sent else None,
            }
        )
    rows.sort(key=lambda r: (-r["Sent"], r["Domain"]))
    return ok(
        StartDate=span.start_text(),
        EndDate=span.end_text(),
        Limit=limit,
        RecipientDomains=rows[:limit],
    )

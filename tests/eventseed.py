"""A small, fixed event history written through the real queue writer, for the event and
statistics tests: two sender domains in January 2026 and one message in the period before."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from relay import events as ev
from relay.services import Services
from tests.apihelpers import Account, accept, make_account, make_domain, outcome, queue_writer
from tests.conftest import Api


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


T0 = at("2026-01-10 12:00:00")


@dataclass
class Seeded:
    acct: Account
    second: Account  # same user, another domain
    empty_domain_id: int  # same user, a domain without events
    other: Account  # another user


async def seed(api: Api, services: Services) -> Seeded:
    acct = await make_account(api)
    second_id = await make_domain(api, acct.api_key, "second.example")
    empty_id = await make_domain(api, acct.api_key, "empty.example")
    second = Account(acct.user_id, acct.api_key, second_id, "second.example")
    other = await make_account(api, "other@example.com", "other.example")
    async with queue_writer(services) as w:
        # example.com, 2026-01-10
        await accept(w, acct, "m1", ["a@gmail.com", "b@yahoo.com"], T0, subject="Welcome to Apex")
        outcome(
            w,
            acct,
            "m1",
            "a@gmail.com",
            ev.DELIVERED,
            T0 + 2,
            250,
            "250 ok",
            {"seconds": 0.5},
        )
        outcome(w, acct, "m1", "b@yahoo.com", ev.BOUNCED, T0 + 5, 550, "550 5.1.1 no such user")
        await accept(w, acct, "m2", ["c@gmail.com"], T0 + 60, subject="Second")
        outcome(w, acct, "m2", "c@gmail.com", ev.DEFERRED, T0 + 61, 421, "421 try later")
        outcome(w, acct, "m2", "c@gmail.com", ev.DELIVERED, T0 + 400, 250, "250 ok")
        await accept(
            w,
            acct,
            "m3",
            ["d@gmail.com"],
            T0 + 100,
            subject='=HYPERLINK("x")',
            sender="+evil@example.com",
            tags=["welcome", "jan"],
        )
        outcome(w, acct, "m3", "d@gmail.com", ev.DELIVERED, T0 + 101, 250, "250 ok")
        outcome(
            w,
            acct,
            None,
            "e@outlook.com",
            ev.REJECTED,
            T0 + 200,
            550,
            "550 5.7.1 Recipient is on the suppression list",
        )
        await accept(w, acct, "m5", ["g@gmail.com"], T0 + 500, subject="Pending")
        # second.example
        await accept(w, second, "m4", ["f@gmail.com"], T0 + 300, subject="From second")
        outcome(w, second, "m4", "f@gmail.com", ev.DELIVERED, T0 + 302, 250, "250 ok")
        # example.com, the previous period (December 2025)
        await accept(w, acct, "m0", ["old@gmail.com"], at("2025-12-20 08:00:00"), subject="Old")
        outcome(w, acct, "m0", "old@gmail.com", ev.DELIVERED, at("2025-12-20 08:00:03"), 250, "ok")
        # another user's domain: never visible to acct
        await accept(w, other, "x1", ["z@gmail.com"], T0, subject="Not yours")
    return Seeded(acct, second, empty_id, other)


# -- Engagement and feedback: what the statistics count once per recipient -----------------------

E0 = at("2026-03-02 09:00:00")
MARCH = {"StartDate": "2026-03-01", "EndDate": "2026-03-31"}
MACHINE = {"machine": True}


@dataclass
class Engaged:
    acct: Account
    quiet_domain_id: int  # same user, no events


async def seed_engagement(api: Api, services: Services) -> Engaged:
    """One sender domain in March 2026, every kind of event the relay records, counted once
    per recipient or not at all (machine hits). The expected figures are in
    tests/test_event_counting.py."""
    acct = await make_account(api, "apex@example.com", "apex.example")
    quiet = await make_domain(api, acct.api_key, "quiet.example")
    t = E0
    async with queue_writer(services) as w:
        # a@gmail.com: delivered; a link scanner's open and click, then two human opens, two
        # human clicks.
        await accept(w, acct, "e1", ["a@gmail.com"], t, tags=["welcome"])
        outcome(w, acct, "e1", "a@gmail.com", ev.DELIVERED, t + 1, 250, "250 ok", {"seconds": 1.5})
        outcome(w, acct, "e1", "a@gmail.com", ev.OPENED, t + 3, data=MACHINE)
        outcome(w, acct, "e1", "a@gmail.com", ev.CLICKED, t + 3, data=MACHINE)
        outcome(w, acct, "e1", "A@Gmail.com", ev.OPENED, t + 600)
        outcome(w, acct, "e1", "a@gmail.com", ev.OPENED, t + 900)
        outcome(w, acct, "e1", "a@gmail.com", ev.CLICKED, t + 610, data={"URL": "https://x/1"})
        outcome(w, acct, "e1", "a@gmail.com", ev.CLICKED, t + 620, data={"URL": "https://x/2"})
        # b@gmail.com: delivered; only machines opened and clicked.
        await accept(w, acct, "e2", ["b@gmail.com"], t + 10)
        outcome(w, acct, "e2", "b@gmail.com", ev.DELIVERED, t + 11, 250, "250 ok", {"seconds": 0.2})
        outcome(w, acct, "e2", "b@gmail.com", ev.OPENED, t + 12, data=MACHINE)
        outcome(w, acct, "e2", "b@gmail.com", ev.CLICKED, t + 12, data=MACHINE)
        # c@yahoo.com: handed to PowerMTA (delivered), which reports accepted-by-mta: delivered
        # once. Opened once.
        await accept(w, acct, "e3", ["c@yahoo.com"], t + 20)
        outcome(w, acct, "e3", "c@yahoo.com", ev.DELIVERED, t + 22, 250, "250 ok", {"seconds": 2})
        outcome(w, acct, "e3", "c@yahoo.com", "accepted-by-mta", t + 80, 250, "250 2.0.0 ok")
        outcome(w, acct, "e3", "c@yahoo.com", ev.OPENED, t + 3600)
        # d@yahoo.com: bounced at delivery, and again by a DSN: bounced once.
        await accept(w, acct, "e4", ["d@yahoo.com"], t + 30)
        outcome(
            w, acct, "e4", "d@yahoo.com", ev.BOUNCED, t + 33, 550, "550 5.1.1 no", {"seconds": 3}
        )
        outcome(w, acct, "e4", "d@yahoo.com", ev.BOUNCED, t + 400, 550, "550 5.1.1 dsn")
        # e@outlook.com: delivered, unsubscribed, complained.
        await accept(w, acct, "e5", ["e@outlook.com"], t + 40)
        outcome(w, acct, "e5", "e@outlook.com", ev.DELIVERED, t + 41, 250, "250 ok", {"seconds": 1})
        outcome(w, acct, "e5", "e@outlook.com", ev.UNSUBSCRIBED, t + 5000)
        outcome(w, acct, "e5", "e@outlook.com", ev.COMPLAINED, t + 6000)
        # f@ and g@gmail.com, one message: f delivered and opened; g deferred, then given up.
        await accept(w, acct, "e6", ["f@gmail.com", "g@gmail.com"], t + 50, tags=["welcome", "jan"])
        outcome(w, acct, "e6", "f@gmail.com", ev.DELIVERED, t + 52, 250, "250 ok", {"seconds": 7})
        outcome(w, acct, "e6", "f@gmail.com", ev.OPENED, t + 7200)
        deferral = {"attempt": 1, "seconds": 30.0, "stage": "connect", "next_attempt_at": t + 170}
        outcome(w, acct, "e6", "g@gmail.com", ev.DEFERRED, t + 110, 421, "421 busy", deferral)
        given_up = {"attempt": 2, "seconds": 40.0, "reason": "max_age"}
        outcome(w, acct, "e6", "g@gmail.com", ev.FAILED, t + 210, 421, "421 busy", given_up)
        # h@outlook.com: refused at RCPT (no message).
        outcome(w, acct, None, "h@outlook.com", ev.REJECTED, t + 60, 550, "550 5.7.1 suppressed")
    return Engaged(acct, quiet)

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

"""bench/events_scale.py's own parts: the history it writes is what it claims, and its
percentiles are right (counts only, never speed)."""

from __future__ import annotations

import random
import time
from collections import Counter

from bench.events_scale import History, parse_args, percentile

DAY = 86400


def test_history_is_what_it_claims() -> None:
    now = time.time()
    start = now - 3 * DAY
    domains = [(1, 1, "q.example", 0.5), (1, 2, "a.example", 0.25), (2, 3, "b.example", 0.25)]
    history = History(random.Random(3), domains, now)
    messages, recipients, events = [], [], []
    for m, r, e in history.days(20_000, start):
        assert [x[0] for x in e] == sorted(x[0] for x in e)  # each batch in time order
        messages += m
        recipients += r
        events += e
    assert len(events) == 20_000
    assert all(start <= e[0] <= now for e in events)
    ids = {m[0] for m in messages}
    assert all(e[3] in ids for e in events if e[3] is not None)
    names = Counter(e[5] for e in events)
    assert set(names) >= {"accepted", "delivered", "bounced", "deferred", "opened", "clicked"}
    assert names["accepted"] > names["delivered"] > names["opened"] > names["clicked"]
    share = sum(1 for e in events if e[2] == 1) / len(events)
    assert 0.4 < share < 0.6
    # Every accepted recipient has a final state row (the last message may have lost some of
    # its events to the exact total).
    assert 0 <= len(recipients) - names["accepted"] <= 3
    assert {r[3] for r in recipients} <= {"delivered", "bounced", "failed"}
    machine = sum(1 for e in events if e[5] == "opened" and e[8] and "machine" in e[8])
    assert 0 < machine < names["opened"]


def test_percentile_and_defaults() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    args = parse_args([])
    assert (args.events, args.database, args.days, args.target_ms) == (
        1_000_000,
        "postgres",
        30,
        200.0,
    )

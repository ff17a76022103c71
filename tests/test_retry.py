"""Retry policy and reply classification: pure functions, no I/O."""

from __future__ import annotations

import random

import pytest

from mta.transaction import Reply
from relay.config import DeliverySettings
from relay.retry import after_failure, backoff


def settings(**kw: float) -> DeliverySettings:
    s = DeliverySettings(retry_base=60, retry_max_interval=3600, retry_jitter=0, max_age=86400)
    for key, value in kw.items():
        setattr(s, key, value)
    return s


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    s = settings()
    assert [backoff(n, s) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert backoff(10_000, s) == 3600  # no overflow for absurd attempt counts


def test_jitter_stays_within_its_fraction() -> None:
    s = settings(retry_jitter=0.2)
    rng = random.Random(7)
    delays = [backoff(3, s, rng) for _ in range(500)]
    assert all(240 * 0.8 <= d <= 240 * 1.2 for d in delays)
    assert max(delays) - min(delays) > 80  # actually spread (the full range is 96)


def test_max_age_gives_up_and_the_last_retry_lands_on_the_deadline() -> None:
    s = settings(max_age=1000)
    early = after_failure(1, since=0, now=10, settings=s)
    assert not early.give_up and early.next_attempt_at == 70
    near = after_failure(7, since=0, now=900, settings=s)
    assert not near.give_up and near.next_attempt_at == 1000  # not 900 + 3600
    assert after_failure(8, since=0, now=1000, settings=s).give_up


@pytest.mark.parametrize(
    ("code", "text", "per_recipient", "hard"),
    [
        (550, "5.1.1 no such user", True, True),
        (550, "5.1.10 recipient address has null MX", True, True),
        (553, "5.1.3 bad address syntax", True, True),
        (550, "5.1.7 bad sender mailbox", True, False),  # about the sender
        (550, "5.1.8 bad sender system", True, False),
        (550, "5.7.1 policy", True, False),
        (550, "no such user", True, False),  # no enhanced status code
        (450, "4.1.1 try later", True, False),
        (550, "5.1.1 no such user", False, False),  # DATA reply for several recipients
    ],
)
def test_hard_bounce(code: int, text: str, per_recipient: bool, hard: bool) -> None:
    assert Reply(code, text, "RCPT", per_recipient).hard_bounce is hard

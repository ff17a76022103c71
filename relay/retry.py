"""Retry policy shared by delivery and webhook posting: exponential backoff with jitter,
bounded by a maximum age (and, optionally, an attempt count).

After attempt n failed, the next one is due ``retry_base * 2**(n-1)`` seconds later, capped at
``retry_max_interval``, then spread by +/- ``retry_jitter`` (a fraction) so that work failed
together by one outage does not come back as one burst. Work older than ``max_age`` (counted
from when it was first due) is given up; the last retry is moved to the deadline itself, so the
final attempt happens at ``max_age``, not up to one interval before it (RFC 5321 4.5.4.1 leaves
the give-up time of mail to the sender; 4-5 days is customary).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol


class RetrySettings(Protocol):
    """What a retry policy reads (``delivery`` and ``webhooks`` settings both have it)."""

    retry_base: float
    retry_max_interval: float
    retry_jitter: float
    max_age: float


def backoff(attempt: int, settings: RetrySettings, rng: random.Random | None = None) -> float:
    """Seconds to wait after attempt number ``attempt`` (1 = the first) failed."""
    exponent = max(attempt, 1) - 1
    # 2**exponent overflows a float for absurd attempt counts; the cap makes them equal anyway.
    delay = settings.retry_max_interval
    if exponent < 64:
        delay = min(settings.retry_base * (2**exponent), settings.retry_max_interval)
    jitter = settings.retry_jitter
    if jitter:
        delay *= 1 + (rng or random).uniform(-jitter, jitter)
    return max(delay, 0.0)


@dataclass(frozen=True, slots=True)
class Decision:
    give_up: bool
    next_attempt_at: float


def after_failure(
    attempt: int,
    since: float,
    now: float,
    settings: RetrySettings,
    rng: random.Random | None = None,
    *,
    max_attempts: int = 0,
) -> Decision:
    """What to do with work whose attempt number ``attempt`` just failed; ``since``: when it
    was first due (``max_age`` counts from there); ``max_attempts``: 0 = no limit."""
    if max_attempts and attempt >= max_attempts:
        return Decision(True, now)
    deadline = since + settings.max_age
    if now >= deadline:
        return Decision(True, now)
    return Decision(False, min(now + backoff(attempt, settings, rng), deadline))

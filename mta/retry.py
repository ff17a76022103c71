"""Retry policy: exponential backoff with jitter, bounded by a maximum age.

After attempt n failed temporarily, the next one is due ``retry_base * 2**(n-1)`` seconds later,
capped at ``retry_max_interval``, then spread by +/- ``retry_jitter`` (a fraction) so that
recipients deferred together by one outage do not come back as one burst. A recipient older
than ``max_age`` (counted from acceptance) is not deferred again: it fails. The last retry is
moved forward to the deadline itself, so the final attempt happens at ``max_age``, not up to
one interval before it (RFC 5321 4.5.4.1 leaves the give-up time to the sender; 4-5 days is
customary).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from relay.config import DeliverySettings


def backoff(attempt: int, settings: DeliverySettings, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``attempt`` (1 = the first attempt) failed temporarily."""
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


def after_temporary_failure(
    attempt: int,
    accepted_at: float,
    now: float,
    settings: DeliverySettings,
    rng: random.Random | None = None,
) -> Decision:
    """What to do with a recipient whose attempt number ``attempt`` just failed temporarily."""
    deadline = accepted_at + settings.max_age
    if now >= deadline:
        return Decision(True, now)
    return Decision(False, min(now + backoff(attempt, settings, rng), deadline))

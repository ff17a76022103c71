"""When a failed webhook delivery is tried again, and when it is given up.

After attempt n failed (any non-2xx answer, a timeout, a connection or DNS failure, a refused
address), the next one is due ``retry_base * 2**(n-1)`` seconds later, capped at
``retry_max_interval`` and spread by +/- ``retry_jitter`` so that deliveries failed together by
one outage do not come back as one burst. With the defaults: about 30 s, 1 min, 2 min, ... then
every 4 hours. A delivery is given up when it reached ``max_attempts`` (when set) or is older
than ``max_age`` (3 days by default; the last retry is moved to the deadline itself, so the
final attempt happens at ``max_age``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from relay.config import WebhookSettings


def backoff(attempt: int, settings: WebhookSettings, rng: random.Random | None = None) -> float:
    """Seconds to wait after attempt number ``attempt`` (1 = the first) failed."""
    exponent = max(attempt, 1) - 1
    delay = settings.retry_max_interval
    if exponent < 64:  # 2**exponent would overflow a float; the cap makes them equal anyway
        delay = min(settings.retry_base * (2**exponent), settings.retry_max_interval)
    if settings.retry_jitter:
        delay *= 1 + (rng or random).uniform(-settings.retry_jitter, settings.retry_jitter)
    return max(delay, 0.0)


@dataclass(frozen=True, slots=True)
class Decision:
    give_up: bool
    next_attempt_at: float


def after_failure(
    attempt: int,
    created_at: float,
    now: float,
    settings: WebhookSettings,
    rng: random.Random | None = None,
) -> Decision:
    """What to do with a delivery whose attempt number ``attempt`` just failed."""
    if settings.max_attempts and attempt >= settings.max_attempts:
        return Decision(True, now)
    deadline = created_at + settings.max_age
    if now >= deadline:
        return Decision(True, now)
    return Decision(False, min(now + backoff(attempt, settings, rng), deadline))

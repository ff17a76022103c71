"""What tests provision, one way: accounts (user, sender domain, SMTP credential) and routes
(a delivery server for a user group) made through the admin API itself, mail sent over real
SMTP, and ``wait_until`` for everything that happens asynchronously.

Fixed sleeps are not used to wait for something: poll the condition with ``wait_until``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def wait_until(
    condition: Any, *, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"
) -> None:
    """Poll ``condition()`` (sync or async) until true; fail after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)

"""Changes to the queue made from the management side, inside the caller's transaction.

The admin API composes these with its repository calls in one SQLAlchemy transaction (both
backends); their statements are in relay/queue/sql.py with the rest of the queue's SQL.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from relay import events
from relay.queue import sql


@dataclass(frozen=True, slots=True)
class Failed:
    message_id: str
    rcpt: str


async def fail_domain_queue(
    conn: AsyncConnection,
    *,
    domain_id: int,
    user_id: int,
    reason: str,
    data: dict[str, Any] | None = None,
) -> list[Failed]:
    """Every pending recipient of the domain's messages becomes ``failed`` with a ``failed``
    event (``smtp_response`` = ``reason``); the bodies nobody needs any more are dropped."""
    now = time.time()
    found = await conn.execute(
        text(sql.FAIL_DOMAIN_PENDING), {"now": now, "reason": reason, "domain_id": domain_id}
    )
    failed = [Failed(mid, rcpt) for mid, rcpt in found.all()]
    if failed:
        payload = json.dumps(data) if data is not None else None
        await conn.execute(
            text(sql.INSERT_EVENT),
            [
                {
                    "created_at": now,
                    "user_id": user_id,
                    "domain_id": domain_id,
                    "message_id": f.message_id,
                    "recipient": f.rcpt,
                    "event": events.FAILED,
                    "smtp_code": None,
                    "smtp_response": reason,
                    "data": payload,
                }
                for f in failed
            ],
        )
        await conn.execute(text(sql.DROP_DOMAIN_BODIES), {"domain_id": domain_id})
    return failed

"""One delivery attempt of one claimed message, and the outcome of each of its recipients.

The message goes to its route's servers in order: a connection failure (cannot connect, TLS or
AUTH refused, dropped before the content was handed over) moves the recipients still without
an answer to the next server within the same attempt. Replies decide per recipient:

- 2xx: ``delivered``.
- 5xx: ``bounced``; a hard bounce (RFC 3463 5.1.x about the recipient's mailbox, see
  ``Reply.hard_bounce``) also puts the recipient on the account's suppression list.
- 4xx, no reply (connection failure, timeout) or no route: ``deferred`` with backoff, or
  ``failed`` once the recipient is older than ``delivery.max_age``.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import aiosmtplib
import structlog

from mta import retry, transaction
from mta.pool import ConnectionPool
from mta.returnpath import ReturnPath  # returnpath
from mta.routing import Route
from mta.transaction import CONNECTION_ERRORS, Reply, connection_failure
from relay import events, metrics
from relay.config import DeliverySettings
from relay.directory import DeliveryServerView
from relay.queue.model import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    FAILED,
    DeliveryOutcome,
    QueuedMessage,
)

log = structlog.get_logger("mta.attempt")

# What opening a connection raises when the server is unreachable or refuses us (including
# TLS verification, STARTTLS missing on a "tls" server, AUTH refused).
OPEN_ERRORS: tuple[type[BaseException], ...] = (
    aiosmtplib.SMTPException,
    ssl.SSLError,
    ValueError,
    *CONNECTION_ERRORS,
)


class MessageAttempt:
    def __init__(
        self,
        message: QueuedMessage,
        pool: ConnectionPool,
        settings: DeliverySettings,
        return_path: ReturnPath | None = None,  # returnpath
    ) -> None:
        self.message = message
        self.return_path = return_path  # returnpath
        self.pool = pool
        self.settings = settings
        self.started = time.monotonic()
        self.replies: dict[int, Reply] = {}  # recipient index -> its reply
        self.via: dict[int, DeliveryServerView] = {}
        self.error: Reply | None = None  # for recipients without a reply
        self.server: DeliveryServerView | None = None  # the last server tried

    async def run(self, route: Route) -> None:
        """Try the route's servers in order until every recipient has a reply."""
        msg = self.message
        if not route.servers:
            self.error = Reply(None, route.reason, "route", failure=True)
            return
        pending = list(range(len(msg.recipients)))
        for position, server in enumerate(route.servers):
            if position:
                metrics.DELIVERY_FAILOVERS.inc()
            self.server = server
            failover = await self._on_server(server, pending)
            pending = [i for i in pending if i not in self.replies]
            if not pending or not failover:
                return

    async def _on_server(self, server: DeliveryServerView, pending: list[int]) -> bool:
        """One server; True when the recipients left may go to the next server."""
        msg = self.message
        pool = self.pool.for_server(server)
        for fresh_try in (False, True):
            rcpts = [msg.recipients[i].rcpt for i in pending]
            try:
                async with pool.connection() as conn:
                    started = time.monotonic()
                    if self.return_path is not None:  # returnpath: VERP per recipient
                        result = await self.return_path.send(conn, server, msg, rcpts)
                    else:
                        result = await transaction.send(conn, msg.mail_from, rcpts, msg.body)
                    metrics.DELIVERY_SECONDS.observe(time.monotonic() - started)
            except OPEN_ERRORS as exc:
                self.error = connection_failure(exc, "connect")
                log.warning(
                    "delivery server unreachable",
                    server_id=server.id,
                    server=server.name,
                    error=self.error.line,
                )
                return True
            for j, reply in result.replies.items():
                self.replies[pending[j]] = reply
                self.via[pending[j]] = server
            if result.error is None:
                return False
            self.error = result.error
            if not (result.stale and not fresh_try):
                log.warning(
                    "delivery connection failed",
                    server_id=server.id,
                    server=server.name,
                    stage=result.error.stage,
                    error=result.error.line,
                )
                return result.failover
            pending = [i for i in pending if i not in self.replies]
        return True

    def interrupted(self, why: str) -> None:
        """The attempt was cut short (lease budget spent, internal error)."""
        self.error = Reply(None, why, "local", failure=True)

    def outcomes(
        self, now: float | None = None, *, only_replied: bool = False
    ) -> list[DeliveryOutcome]:
        """Per-recipient outcomes; ``only_replied``: just those with a server reply."""
        now = time.time() if now is None else now
        msg = self.message
        seconds = round(time.monotonic() - self.started, 3)
        out = []
        for i, rc in enumerate(msg.recipients):
            reply = self.replies.get(i)
            if only_replied and (reply is None or reply.code is None or reply.failure):
                continue
            if reply is None:
                reply = self.error or Reply(
                    None, "no delivery was attempted", "local", failure=True
                )
            server = self.via.get(i, self.server)
            attempt = rc.attempts + 1
            data: dict[str, Any] = {"attempt": attempt, "seconds": seconds, "stage": reply.stage}
            if reply.stage == "route":
                data["reason"] = "no_route"
            elif server is not None:
                data["server_id"] = server.id
                data["server"] = server.name
            code = reply.code
            answer = None if reply.failure else code
            suppress = False
            next_at = now
            if answer is not None and 200 <= answer < 300:
                state, event = DELIVERED, events.DELIVERED
            elif answer is not None and 500 <= answer < 600:
                state, event = BOUNCED, events.BOUNCED
                suppress = reply.hard_bounce
            else:
                decision = retry.after_temporary_failure(attempt, rc.created_at, now, self.settings)
                if decision.give_up:
                    state, event = FAILED, events.FAILED
                    data["reason"] = "max_age"
                else:
                    state, event = DEFERRED, events.DEFERRED
                    next_at = decision.next_attempt_at
                    data["next_attempt_at"] = round(next_at, 3)
            out.append(
                DeliveryOutcome(
                    recipient_id=rc.id,
                    message_id=msg.id,
                    user_id=msg.user_id,
                    domain_id=msg.domain_id,
                    rcpt=rc.rcpt,
                    state=state,
                    event=event,
                    attempts=attempt,
                    next_attempt_at=next_at,
                    code=code,
                    response=reply.line[:4000],
                    data=data,
                    suppress=suppress,
                    created_at=now,
                )
            )
        return out

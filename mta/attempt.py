"""One delivery attempt of one claimed message, and the outcome of each of its recipients.

The message goes to its route's servers in order: a connection failure (cannot connect, TLS or
AUTH refused, dropped before the content was handed over) moves the recipients still without
an answer to the next server within the same attempt. On one connection, the recipients that
share the message's body go in one SMTP transaction, and each recipient with its own body (a
variant, e.g. with its own tracking links) in a transaction of its own. Replies decide per
recipient:

- 2xx: ``delivered``.
- 5xx: ``bounced``; a hard bounce (RFC 3463 5.1.x about the recipient's mailbox, see
  ``Reply.hard_bounce``) also puts the recipient on the account's suppression list.
- 4xx, no reply (connection failure, timeout) or no route: ``deferred`` with backoff, or
  ``failed`` once the recipient is older than ``delivery.max_age`` (counted from when the
  message became due: acceptance, or its scheduled time).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import structlog

from mta import transaction
from mta.errors import OPEN_ERRORS
from mta.pool import Connection, ConnectionPool
from mta.returnpath import ReturnPath
from mta.routing import Route
from mta.transaction import Reply, Result, connection_failure
from relay import events, metrics, retry
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

NO_CONTENT = "message content is no longer stored"


class MessageAttempt:
    def __init__(
        self,
        message: QueuedMessage,
        pool: ConnectionPool,
        settings: DeliverySettings,
        return_path: ReturnPath | None = None,
    ) -> None:
        self.message = message
        self.return_path = return_path
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
        pending = []
        for i, rc in enumerate(msg.recipients):
            if rc.body is None and not msg.body:
                self.replies[i] = Reply(None, NO_CONTENT, "local", failure=True)
            else:
                pending.append(i)
        if not pending:
            return
        if not route.servers:
            self.error = Reply(None, route.reason, "route", failure=True)
            return
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
        pool = self.pool.for_server(server)
        for fresh_try in (False, True):
            try:
                async with pool.connection() as conn:
                    failed = await self._transactions(conn, server, pending)
            except OPEN_ERRORS as exc:
                self.error = connection_failure(exc, "connect")
                log.warning(
                    "delivery server unreachable",
                    server_id=server.id,
                    server=server.name,
                    error=self.error.line,
                )
                return True
            if failed is None:
                return False
            assert failed.error is not None
            self.error = failed.error
            if not (failed.stale and not fresh_try):
                log.warning(
                    "delivery connection failed",
                    server_id=server.id,
                    server=server.name,
                    stage=failed.error.stage,
                    error=failed.error.line,
                )
                return failed.failover
            pending = [i for i in pending if i not in self.replies]
        return True

    async def _transactions(
        self, conn: Connection, server: DeliveryServerView, pending: list[int]
    ) -> Result | None:
        """The pending recipients' transactions on one connection: those sharing the
        message's body together, each one with its own body alone. Returns the connection
        failure that ended them, if one did."""
        msg = self.message
        shared = [i for i in pending if msg.recipients[i].body is None]
        groups = [(msg.body, shared)] if shared else []
        for i in pending:
            own = msg.recipients[i].body
            if own is not None:
                groups.append((own, [i]))
        for number, (body, members) in enumerate(groups):
            rcpts = [msg.recipients[i].rcpt for i in members]
            started = time.monotonic()
            # PowerMTA's X-Job names the message (mta/powermta/inject.py).
            send = functools.partial(transaction.send, message_id=msg.id)
            if self.return_path is not None:
                # A VERP return path per recipient, and the server's From rules.
                result = await self.return_path.send(conn, server, msg, rcpts, body, send)
            else:
                result = await send(conn, msg.mail_from, rcpts, body)
            metrics.DELIVERY_SECONDS.observe(time.monotonic() - started)
            for j, reply in result.replies.items():
                self.replies[members[j]] = reply
                self.via[members[j]] = server
            if result.error is None:
                continue
            if not result.failover:
                # Lost during DATA: the server may hold these, so they are not handed to
                # another server (deferred); recipients of later transactions may still be.
                for i in members:
                    if i not in self.replies:
                        self.replies[i] = result.error
                        self.via[i] = server
                result.failover = number + 1 < len(groups)
            return result
        return None

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
                due_since = max(rc.created_at, msg.not_before or 0.0)
                decision = retry.after_failure(attempt, due_since, now, self.settings)
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

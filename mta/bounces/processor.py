"""From a report the MX listener accepted to events, suppressions, or a stored copy.

For each VERP return path the report was sent to: the token names the message and, by its
recipient tag, one of the message's recipients (looked up once per report). The report is
parsed (in a thread: a report may be megabytes), and becomes one ``Feedback`` item:

- a DSN or text bounce whose block for that recipient says ``failed``: ``bounced`` (data:
  ``BounceCategory``, ``DSNStatus``, ``DSNDiag``, ...), suppressed when ``classify.is_hard``;
- ``delayed``: ``deferred``;
- an ARF report of type abuse, fraud, virus or other: ``complained``, suppressed; opt-out:
  ``unsubscribed``, suppressed;
- anything else that is understood (automatic replies, success notices, DMARC failure
  reports, read receipts): nothing recorded, counted as ``ignored``.

A report that cannot be parsed, or whose message or recipient is unknown, is stored in
``mx_reports`` for inspection (bounded in age and number), logged and counted; it is still a
250 to the sender. Only storage trouble answers 451, so the sender retries. The same report
delivered twice records once (a dedupe key from its Message-ID, else its content).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from mta.bounces import classify
from mta.bounces.parse import ARF, IGNORED, UNPARSED, Report, parse_report
from mta.returnpath import Token, VerpKeys
from relay import events, metrics
from relay.config import MxSettings
from relay.queue.feedback import Feedback, FeedbackWriter
from relay.store.db import Database, StorageUnavailable, storable_text
from relay.store.repos import bounces as repo

log = structlog.get_logger("mta.bounces")

COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})
OPT_OUT_TYPES = frozenset({"opt-out", "unsubscribe"})
# The stored copy of an unusable report is cut here (``size`` keeps the whole size).
STORED_BYTES = 256 * 1024
# Pruning runs at most this often, and after this many stored reports.
_PRUNE_EVERY_SECONDS = 3600.0
_PRUNE_EVERY_STORED = 100
_SMTP_CODE = re.compile(r"^([45]\d\d)\b")

# Results (the ``result`` label of relay_mx_reports_total).
BOUNCED, DEFERRED, COMPLAINED, UNSUBSCRIBED = "bounced", "deferred", "complained", "unsubscribed"
DUPLICATE, IGNORED_RESULT, UNMATCHED, UNPARSED_RESULT = (
    "duplicate",
    "ignored",
    "unmatched",
    UNPARSED,
)
ERROR = "error"


@dataclass(slots=True)
class Inbound:
    """One accepted transaction of the MX listener."""

    client_ip: str
    helo: str
    mail_from: str
    # The return-path addresses and their verified tokens; None for a feedback address.
    rcpts: list[tuple[str, Token | None]]
    data: bytes


class ReportProcessor:
    def __init__(
        self, db: Database, keys: VerpKeys, writer: FeedbackWriter, settings: MxSettings
    ) -> None:
        self.db, self.keys, self.writer, self.settings = db, keys, writer, settings
        self._stored_since_prune = 0
        self._next_prune = 0.0

    async def handle(self, inbound: Inbound) -> list[str]:
        """The result for each recipient (return path or feedback address); raises
        StorageUnavailable (the sender retries)."""
        report = await asyncio.to_thread(parse_report, inbound.data)
        results = []
        for address, token in inbound.rcpts:
            try:
                result = await self._one(inbound, report, address, token)
            except Exception as exc:
                if _storage_trouble(exc):
                    raise
                log.exception("report not processed", message_id=token and token.message_id)
                await self._store(inbound, address, token, ERROR, type(exc).__name__)
                result = ERROR
            metrics.MX_REPORTS.labels(result).inc()
            results.append(result)
        return results

    async def _one(
        self, inbound: Inbound, report: Report, address: str, token: Token | None
    ) -> str:
        if report.kind == UNPARSED:
            await self._store(inbound, address, token, UNPARSED_RESULT, report.why)
            return UNPARSED_RESULT
        if report.kind == IGNORED:
            log.info("report ignored", why=report.why)
            return IGNORED_RESULT
        if token is None:  # sent to a feedback address: the report says which return path
            token = self._quoted_token(report, inbound.data)
            if token is None:
                await self._store(inbound, address, None, UNMATCHED, "no return path in report")
                return UNMATCHED
        async with self.db.read() as conn:
            candidates = await repo.recipients_of(conn, token.message_id)
        recipient = next((r for r in candidates if self.keys.is_recipient(token, r)), None)
        if recipient is None:
            why = "recipient not in message" if candidates else "unknown message"
            await self._store(inbound, address, token, UNMATCHED, why)
            return UNMATCHED
        item = self._feedback(report, token.message_id, recipient, inbound.data)
        if item is None:
            log.info("report ignored", kind=report.kind, message_id=token.message_id)
            return IGNORED_RESULT
        (recorded,) = await self.writer.record([item])
        if not recorded:
            # The message and recipient exist (just looked up): the key was seen before.
            return DUPLICATE
        log.info(
            "report recorded",
            recorded=item.event,
            message_id=token.message_id,
            category=(item.data or {}).get("BounceCategory"),
            suppressed=item.suppress is not None,
        )
        return item.event

    def _quoted_token(self, report: Report, data: bytes) -> Token | None:
        """The return path a report quotes: the ARF Original-Mail-From, the reported
        message's Return-Path, else the only one found anywhere in it."""
        quoted: list[str] = []
        if report.complaint is not None and report.complaint.original_mail_from:
            quoted.append(report.complaint.original_mail_from)
        if report.original is not None:
            quoted.extend(str(v) for v in report.original.get_all("Return-Path") or [])
        for text in quoted:
            token = self.keys.parse(text.strip())
            if token is not None:
                return token
        found = self.keys.quoted(data[:STORED_BYTES].decode("latin-1"))
        return found.pop() if len(found) == 1 else None

    def _feedback(
        self, report: Report, message_id: str, recipient: str, data: bytes
    ) -> Feedback | None:
        if report.kind == ARF:
            return _complaint(report, message_id, recipient, data)
        status = report.status_for(recipient)
        if status is None or status.action not in ("failed", "delayed"):
            return None
        event = events.BOUNCED if status.action == "failed" else events.DEFERRED
        category = status.category(report.text)
        found = _SMTP_CODE.match(status.diagnostic)
        fields: dict[str, Any] = {
            "BounceCategory": category,
            "DSNStatus": status.status,
            "DSNDiag": status.diagnostic,
            "DSNAction": status.action,
            "ReportingMTA": report.reporting_mta,
            "RemoteMTA": status.remote_mta,
            "FinalRecipient": status.final_recipient,
            "report": report.kind,
            "source": "mx",
        }
        hard = event == events.BOUNCED and classify.is_hard(category, status.status)
        return Feedback(
            message_id,
            recipient,
            event,
            smtp_code=int(found[1]) if found else None,
            smtp_response=status.diagnostic or f"{status.status} ({status.action})",
            data={k: v for k, v in fields.items() if v},
            suppress="bounce" if hard else None,
            suppress_reason=status.diagnostic or f"{status.status} {category}",
            dedupe_key=_dedupe(report, data, message_id, recipient, event),
        )

    async def _store(
        self, inbound: Inbound, address: str, token: Token | None, result: str, why: str
    ) -> None:
        # (token None: a report to a feedback address that quoted no return path)
        """Keep an unusable report for inspection (never its content in the log)."""
        now = time.time()
        async with self.db.write() as conn:
            await repo.store_report(
                conn,
                created_at=now,
                result=result,
                reason=why[:255],
                client_ip=inbound.client_ip[:64],
                mail_from=storable_text(inbound.mail_from[:320]) or "",
                rcpt=address[:320],
                message_id=token.message_id if token else None,
                size=len(inbound.data),
                content=inbound.data[:STORED_BYTES],
            )
            self._stored_since_prune += 1
            if self._stored_since_prune >= _PRUNE_EVERY_STORED or now >= self._next_prune:
                await self._prune(conn, now)
        log.warning(
            "report stored for inspection",
            result=result,
            why=why,
            client_ip=inbound.client_ip,
            message_id=token.message_id if token else None,
            size=len(inbound.data),
        )

    async def prune(self) -> int:
        async with self.db.write() as conn:
            return await self._prune(conn, time.time())

    async def _prune(self, conn: Any, now: float) -> int:
        s = self.settings
        gone = await repo.prune_reports(
            conn, now - s.report_retention_days * 86400, s.report_max_stored
        )
        self._stored_since_prune = 0
        self._next_prune = now + _PRUNE_EVERY_SECONDS
        return gone


def _complaint(report: Report, message_id: str, recipient: str, data: bytes) -> Feedback | None:
    complaint = report.complaint
    assert complaint is not None
    kind = complaint.feedback_type
    if kind in COMPLAINT_TYPES:
        event, source = events.COMPLAINED, "complaint"
    elif kind in OPT_OUT_TYPES:
        event, source = events.UNSUBSCRIBED, "unsubscribe"
    else:
        return None  # auth-failure (RFC 6591), not-spam (RFC 6650), ...: not about the recipient
    fields = {
        "FeedbackType": kind,
        "UserAgent": complaint.user_agent,
        "SourceIP": complaint.source_ip,
        "ArrivalDate": complaint.arrival_date,
        "ReportedDomain": complaint.reported_domain,
        "report": report.kind,
        "source": "mx",
    }
    return Feedback(
        message_id,
        recipient,
        event,
        data={k: v for k, v in fields.items() if v},
        suppress=source,
        suppress_reason=f"{kind} report"
        + (f" ({complaint.user_agent})" if complaint.user_agent else ""),
        dedupe_key=_dedupe(report, data, message_id, recipient, event),
    )


def _dedupe(report: Report, data: bytes, message_id: str, recipient: str, event: str) -> str:
    """The same report delivered twice (a lost 250, a resend) records once."""
    source = report.report_id.encode() if report.report_id else data
    digest = hashlib.sha256(source + b"\0" + recipient.lower().encode()).hexdigest()[:40]
    return f"mx:{message_id}:{event}:{digest}"


def _storage_trouble(exc: BaseException) -> bool:
    return isinstance(exc, StorageUnavailable | SQLAlchemyError | OSError)

"""Accepting a checked message: add trace and identity headers, DKIM-sign, queue durably.

Shared by the SMTP DATA stage and the HTTP send API, so both produce identical messages.
Returns only after the group commit holds the message, its recipients and their 'accepted'
events; raises StorageUnavailable (SMTP: 451 4.3.0) otherwise. Nothing after the commit can
fail the message: the send limit was reserved before (relay.policy), so the commit alone
decides the answer. The message's first log line ("accepted", with its queue id) is written
here, once committed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from relay import metrics
from relay.directory import DomainView, UserView
from relay.dkim import DkimSigner
from relay.message import ParsedMessage, date_header, message_id_header, received_header
from relay.queue.ingest import QueueWriter
from relay.queue.model import NewMessage
from relay.services import Services
from relay.tracking.render import Tracker, options_for

log = structlog.get_logger("relay.submit")
_NOTHING: dict[str, int] = {}  # (never changed: no dict per untracked message for the log line)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from, for the Received header and the message row."""

    source: str  # "smtp" | "api"
    client_ip: str
    helo: str
    tls: str | None = None  # e.g. "TLSv1.3"
    authenticated: bool = True
    credential_id: int | None = None
    api_key_id: int | None = None


class Submitter:
    """``tracker``: opens, clicks and unsubscribe links per recipient (relay.tracking.render);
    None (or a domain with nothing to track) signs the message once, as it came."""

    def __init__(
        self,
        services: Services,
        writer: QueueWriter,
        signer: DkimSigner,
        tracker: Tracker | None = None,
    ) -> None:
        self.services = services
        self.writer = writer
        self.signer = signer
        self.tracker = tracker
        self.hostname = services.settings.hostname

    async def accept(
        self,
        *,
        user: UserView,
        domain: DomainView,
        mail_from: str,
        recipients: list[str],
        message: ParsedMessage,
        origin: Origin,
        tags: Sequence[str] = (),
        not_before: float | None = None,
        queue_id: str | None = None,
        track_links: bool | None = None,
        track_opens: bool | None = None,
    ) -> str:
        """Sign and queue; the message's queue id once committed. ``not_before`` (Unix time)
        schedules delivery for later; ``queue_id`` chooses the id beforehand (a caller that
        must know it even if this call never returns). ``track_links`` / ``track_opens``
        (the send API's TrackLinks / TrackOpens) override the domain's options when given."""
        queue_id = queue_id or str(uuid.uuid4())
        now = time.time()
        # RFC 6409 8.3: a submission server may add a missing Message-ID and Date.
        if not message.values(b"message-id"):
            message.headers.append(list(message_id_header(queue_id, self.hostname)))
        if not message.values(b"date"):
            message.headers.append(list(date_header(now)))
        trace = received_header(
            helo=origin.helo,
            client_ip=origin.client_ip,
            hostname=self.hostname,
            queue_id=queue_id,
            tls=origin.tls,
            authenticated=origin.authenticated,
            now=now,
        )
        variants: dict[str, bytes] | None = None
        tracker = self.tracker
        if tracker is not None and tracker.may_track(domain):
            signed = await tracker.sign(
                domain=domain,
                message=message,
                queue_id=queue_id,
                recipients=recipients,
                trace=trace,
                options=options_for(domain, track_links=track_links, track_opens=track_opens),
                # The tokens' time: the prefetch rule counts from when the message may go out.
                now=max(now, not_before) if not_before else now,
            )
            body, variants = signed.body, signed.variants
        else:
            # Nothing to track (no tracking host): sign once, no tracking work at all.
            started = time.perf_counter()
            signature = await self.signer.sign(
                domain.dkim_key, message.headers, message.body, domain.name, domain.dkim_selector
            )
            metrics.DKIM_SIGN_SECONDS.observe(time.perf_counter() - started)
            body = message.to_bytes(prepend=[signature, trace])
        message_id = message.first_text(b"message-id")
        await self.writer.submit(
            NewMessage(
                id=queue_id,
                user_id=user.id,
                domain_id=domain.id,
                source=origin.source,
                mail_from=mail_from,
                recipients=recipients,
                body=body,
                header_from=message.first_text(b"from"),
                subject=message.first_text(b"subject"),
                message_id_header=message_id,
                client_ip=origin.client_ip,
                credential_id=origin.credential_id,
                api_key_id=origin.api_key_id,
                created_at=now,
                tags=list(tags),
                not_before=not_before,
                variants=variants,
            )
        )
        metrics.MESSAGE_BYTES.observe(len(body))
        log.info(
            "accepted",
            queue_id=queue_id,
            source=origin.source,
            client_ip=origin.client_ip,
            user_id=user.id,
            domain=domain.name,
            mail_from=mail_from,
            recipients=len(recipients),
            size=len(body),
            **({"variants": len(variants)} if variants else _NOTHING),
            message_id=message_id,
            **({"scheduled": not_before} if not_before is not None else {}),
        )
        return queue_id

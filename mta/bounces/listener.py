"""The MX listener (``mx.listen``): inbound SMTP for the return-path hosts, port 25 in
production, where bounces and complaints about our mail arrive.

It has no AUTH and never relays: RCPT is accepted only for a return-path address whose VERP
token verifies (mta/returnpath.py), at the host it was issued for, and for the operator's
``mx.feedback_addresses`` (where feedback loops send every complaint); anything else gets
``550 5.7.1`` at RCPT. MAIL accepts any sender, the null reverse-path included (DSNs come from
``<>``, RFC 3464 2 / RFC 5321 4.5.5). STARTTLS is offered with the submission listeners'
certificate, since senders of bounces use it when they can.

The protocol is the submission listener's (relay.smtp.protocol.RelaySMTP, by subclass): DATA
read in bulk up to ``mx.max_message_size`` (552 5.3.4 beyond, the rest still read),
enhanced status codes on every reply, one idle timer per connection, connection caps in all
and per client address (421 4.7.0), a drain on stop. Its own: the line-length check, the
recipient cap per transaction, and what happens after DATA (mta/bounces/processor.py).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.smtp import Envelope

from mta.bounces import replies as mx_replies
from mta.bounces.processor import Inbound, ReportProcessor
from mta.returnpath import Token, VerpKeys, load_keys
from relay import metrics
from relay.addresses import has_control_chars
from relay.config import parse_hostport
from relay.message import has_line_longer_than, normalize_line_endings
from relay.nodelimits import ConnectionTable, LocalGate
from relay.queue.feedback import FeedbackWriter
from relay.services import Services
from relay.smtp import replies
from relay.smtp.protocol import DataBudget, RelaySMTP, drain
from relay.tls import ensure_self_signed, server_context

log = structlog.get_logger("mta.bounces")

# A report goes to one return path; a sender batching a few is fine, a hundred is not a
# bounce (RFC 5321 4.5.3.1.8: 452 and the client sends the rest later).
MAX_RECIPIENTS = 20


class MxEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        # Each accepted recipient and its token (None: one of mx.feedback_addresses).
        self.tokens: list[tuple[str, Token | None]] = []


class MxSMTP(RelaySMTP):
    """The submission protocol without AUTH, counted in the MX listener's own metrics."""

    def counted(self, change: int) -> None:
        metrics.MX_CONNECTIONS.inc(change)

    def _create_envelope(self) -> MxEnvelope:  # type: ignore[override]
        return MxEnvelope()

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(mx_replies.NO_AUTH)


def _refused(stage: str, reply: str) -> str:
    metrics.MX_REJECTIONS.labels(stage, reply[:3]).inc()
    return reply


class MxHandler:
    def __init__(self, server: MxServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, server: MxSMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        if has_control_chars(hostname) or len(hostname) > 255:
            return [replies.EHLO_BAD]
        session.host_name = hostname
        kept = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        extra = [
            f"250-SIZE {self.server.max_message_size}",
            "250-PIPELINING",  # RFC 2920; DATA leftovers go back to the reader
            "250-ENHANCEDSTATUSCODES",  # RFC 2034
        ]
        return kept[:-1] + extra + kept[-1:]

    async def handle_HELO(self, server: MxSMTP, session: Any, envelope: Any, hostname: str) -> str:
        if has_control_chars(hostname) or len(hostname) > 255:
            return replies.EHLO_BAD
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: MxSMTP,
        session: Any,
        envelope: MxEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        for opt in mail_options:
            key, _, value = opt.partition("=")
            # RFC 1870: refuse at MAIL what would be refused after DATA anyway.
            too_big = value.isdigit() and int(value) > self.server.max_message_size
            if key.upper() == "SIZE" and too_big:
                return _refused("mail", replies.TOO_BIG)
        if has_control_chars(address) or len(address) > 320:
            return _refused("mail", replies.SENDER_BAD_SYNTAX)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return mx_replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: MxSMTP,
        session: Any,
        envelope: MxEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return _refused("rcpt", replies.TOO_MANY_RCPTS)
        token = self.server.keys.parse(address) if self.server.keys is not None else None
        if token is None and address.lower() not in self.server.feedback_addresses:
            return _refused("rcpt", mx_replies.NOT_A_RETURN_PATH)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.tokens.append((address, token))
        return mx_replies.RECIPIENT_OK

    async def handle_DATA(self, server: MxSMTP, session: Any, envelope: MxEnvelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes) and self.server.processor is not None
        limit = self.server.settings.mx.max_line_length
        if limit and has_line_longer_than(normalize_line_endings(content), limit):
            return _refused("data", replies.LINE_TOO_LONG.format(detail=limit))
        inbound = Inbound(
            client_ip=server.peer_ip,
            helo=session.host_name or "",
            mail_from=envelope.mail_from or "",
            rcpts=list(envelope.tokens),
            data=content,
        )
        try:
            await self.server.processor.handle(inbound)
        except Exception as exc:  # storage trouble: the sender keeps the report and retries
            log.warning("report not taken; sender will retry", error=type(exc).__name__)
            return _refused("data", replies.TEMPORARY)
        return mx_replies.REPORT_ACCEPTED

    async def handle_exception(self, error: Exception) -> str:
        log.error("unexpected error in MX session", exc_info=error)
        return replies.TEMPORARY


class MxServer:
    """Self-contained: ``await start()``, ``await stop(timeout, hurry)``. ``writer``: the
    node's feedback writer; without one it runs its own."""

    def __init__(self, services: Services, writer: FeedbackWriter | None = None) -> None:
        self.services = services
        self.settings = s = services.settings
        self.owns_writer = writer is None
        self.writer = writer or FeedbackWriter(services.db, services.bus)
        # Its own connection limits and DATA budget, apart from the submission listeners'.
        table = ConnectionTable(s.mx.max_connections, s.mx.max_connections_per_ip)
        self.connections = LocalGate(table, "mx")
        self.data_budget = DataBudget(max(s.smtp.data_memory_limit, s.mx.max_message_size))
        self.max_session_time = s.smtp.max_session_time
        self.max_message_size = s.mx.max_message_size
        self.feedback_addresses = frozenset(a.lower() for a in s.mx.feedback_addresses)
        self.sessions: set[MxSMTP] = set()
        self.draining = False
        self.keys: VerpKeys | None = None
        self.processor: ReportProcessor | None = None
        self.handler = MxHandler(self)
        self._servers: list[asyncio.Server] = []

    @staticmethod
    def plaintext_ok(_ip: str) -> bool:
        return False  # RelaySMTP asks; there is no AUTH here at all

    def _factory(self, ctx: ssl.SSLContext) -> MxSMTP:
        s = self.settings
        return MxSMTP(
            self.handler,
            listener=self,
            implicit_tls=False,
            hostname=s.hostname,
            ident="relay MX",
            data_size_limit=None,  # SIZE is ours: advertised in EHLO, enforced with 552 5.3.4
            tls_context=ctx,
            timeout=s.mx.command_timeout,
            auth_required=False,
            auth_require_tls=True,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            enable_SMTPUTF8=True,
        )

    async def start(self) -> None:
        s = self.settings
        db = self.services.db
        self.keys = await load_keys(db, self.services.box, s.security.return_path_secret)
        if self.owns_writer:
            self.writer.start()
        self.processor = ReportProcessor(db, self.keys, self.writer, s.mx)
        await self.processor.prune()
        if s.smtp.tls_cert:
            cert, key = Path(s.smtp.tls_cert), Path(s.smtp.tls_key)
        else:
            cert, key = await asyncio.to_thread(ensure_self_signed, s.data_path, s.hostname)
        ctx = server_context(cert, key)
        loop = asyncio.get_running_loop()
        for addr in s.mx.listen:
            host, port = parse_hostport(addr)
            server = await loop.create_server(
                lambda: self._factory(ctx), host or None, port, reuse_address=True, backlog=1024
            )
            self._servers.append(server)
        log.info("MX listener started", listen=[f"{h}:{p}" for h, p in self.bound()])

    def bound(self) -> list[tuple[str, int]]:
        out = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    async def stop(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Stop accepting; idle sessions get 421 now, busy ones after their transaction; after
        ``timeout`` (or when ``hurry`` is set) the rest are cut. Then what is recorded is
        committed."""
        self.draining = True
        await drain(self._servers, self.sessions, timeout, hurry)
        if self.owns_writer:
            await self.writer.stop()

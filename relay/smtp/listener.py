"""The SMTP listeners: STARTTLS ports and implicit-TLS ports (RFC 8314), and their drain."""

from __future__ import annotations

import asyncio
import socket
import ssl

import structlog

from relay.config import parse_hostport
from relay.services import Services
from relay.smtp.handler import RelayHandler
from relay.smtp.protocol import DataBudget, RelaySMTP, drain, plaintext_networks
from relay.submit import Submitter
from relay.tls import ServerTLS, tls_files

log = structlog.get_logger("relay.smtp")


class SmtpServer:
    """``submitter``: the process's submission path (relay.node builds it, and shares it with
    the HTTP send API). ``inherited``: listening sockets bound by the main process (an SMTP
    worker process accepts on them too); without it, bind what the settings say."""

    def __init__(
        self,
        services: Services,
        submitter: Submitter,
        inherited: list[tuple[str, socket.socket]] | None = None,
    ) -> None:
        self.inherited = inherited
        s = services.settings
        self.services = services
        self.submitter = submitter
        self.handler = RelayHandler(services, self.submitter)
        self.plaintext_ok = plaintext_networks(s.smtp.plaintext_auth_networks)
        self.max_message_size = s.smtp.max_message_size
        self.max_session_time = s.smtp.max_session_time
        # Admission: the node's connection table, whatever the process (relay.nodelimits).
        self.connections = services.connections
        self.data_budget = DataBudget(s.smtp.data_memory_limit)
        self.sessions: set[RelaySMTP] = set()
        self.draining = False
        self._servers: list[tuple[str, asyncio.Server]] = []
        self.tls: ServerTLS | None = None

    def _factory(self, ctx: ssl.SSLContext, implicit: bool) -> RelaySMTP:
        s = self.services.settings
        return RelaySMTP(
            self.handler,
            listener=self,
            implicit_tls=implicit,
            hostname=s.hostname,
            ident="relay ESMTP",
            data_size_limit=None,  # SIZE is ours: advertised in EHLO, enforced with 552 5.3.4
            tls_context=None if implicit else ctx,
            timeout=s.smtp.command_timeout,
            auth_required=True,
            auth_require_tls=True,  # relaxed per connection in RelaySMTP.connection_made
            # RFC 6531: internationalized addresses (8BITMIME is offered by default, RFC 6152).
            enable_SMTPUTF8=True,
        )

    async def start(self) -> None:
        s = self.services.settings
        cert, key = await asyncio.to_thread(tls_files, s)
        self.tls = ServerTLS(cert, key)
        ctx = self.tls.context
        loop = asyncio.get_running_loop()
        if self.inherited is not None:
            for kind, sock in self.inherited:
                implicit = kind == "smtps"
                # create_server listen()s again on the shared socket: with the same backlog,
                # or the last process to start would shrink the main process's queue.
                server = await loop.create_server(
                    lambda implicit=implicit: self._factory(ctx, implicit),
                    sock=sock,
                    ssl=ctx if implicit else None,
                    backlog=s.smtp.listen_backlog,
                )
                self._servers.append((kind, server))
            return
        for kind, addrs in (("smtp", s.smtp.listen), ("smtps", s.smtp.smtps_listen)):
            implicit = kind == "smtps"
            for addr in addrs:
                host, port = parse_hostport(addr)
                server = await loop.create_server(
                    lambda implicit=implicit: self._factory(ctx, implicit),
                    host or None,
                    port,
                    ssl=ctx if implicit else None,
                    reuse_address=True,
                    backlog=s.smtp.listen_backlog,
                )
                self._servers.append((kind, server))

    async def reload_tls(self) -> None:
        """Load the configured (or generated) certificate and key again, for new connections."""
        if self.tls is not None:
            cert, key = await asyncio.to_thread(tls_files, self.services.settings)
            self.tls.reload(cert, key)

    def listening_fds(self) -> list[tuple[str, int]]:
        """(kind, file descriptor) of every listening socket, for SMTP worker processes."""
        return [(k, sock.fileno()) for k, server in self._servers for sock in server.sockets]

    def bound(self, kind: str) -> list[tuple[str, int]]:
        out = []
        for k, server in self._servers:
            if k == kind:
                for sock in server.sockets:
                    name = sock.getsockname()
                    out.append((str(name[0]), int(name[1])))
        return out

    async def stop(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Stop accepting; idle sessions get 421 now, busy ones after their transaction; after
        ``timeout`` (or when ``hurry`` is set) the rest are cut."""
        self.draining = True
        cut = await drain((server for _, server in self._servers), self.sessions, timeout, hurry)
        if cut:
            log.warning("cut SMTP sessions at shutdown", sessions=cut)

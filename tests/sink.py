"""A real downstream SMTP server for tests: aiosmtpd on a free loopback port.

It runs inside the test's event loop (``loop.create_server``, not aiosmtpd's threaded
Controller), records every message it accepts and can be programmed per test:

    sink.rcpt_replies["nobody@example.net"] = "550 5.1.1 no such user"
    sink.data_reply = "554 5.7.1 rejected"
    sink.fail_first(2, "451 4.3.0 try again later")       # then accept
    sink.hold_data()  ...  sink.release_data()              # keep deliveries mid-flight
    Sink(tls="starttls" | "implicit", auth=("user", "pw"))
    Sink(smtputf8=False)                                    # a server without RFC 6531

Replies are whole SMTP reply lines, as aiosmtpd handler hooks return them. A reply of
``None`` in ``fail_first`` closes the connection without answering (a dropped connection).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from relay.tls import ensure_self_signed, server_context
from tests.provision import wait_until

TlsMode = Literal["none", "starttls", "implicit"]
Stage = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True)
class Received:
    """One accepted transaction."""

    mail_from: str  # "" for the null reverse-path (MAIL FROM:<>)
    rcpt_tos: list[str]
    data: bytes  # exactly the bytes after un-dot-stuffing, CRLF line ends included
    received_at: float
    connection: int  # which connection (1, 2, ...) carried it
    tls: bool
    auth_user: str | None


@dataclass
class _Failure:
    remaining: int
    reply: str | None
    stage: Stage


@dataclass
class _Conn:
    number: int
    protocol: SMTP
    auth_user: str | None = None
    transactions: int = 0


class Sink:
    def __init__(
        self,
        *,
        tls: TlsMode = "none",
        auth: tuple[str, str] | None = None,
        cert_dir: Path | None = None,
        hostname: str = "sink.test",
        smtputf8: bool = True,
    ) -> None:
        if tls != "none" and cert_dir is None:
            raise ValueError("TLS needs cert_dir for the self-signed certificate")
        self.tls_mode = tls
        self.auth = auth
        self.hostname = hostname
        self.smtputf8 = smtputf8  # offer SMTPUTF8 (RFC 6531)
        self.host = "127.0.0.1"
        self.port = 0
        self.cert_file: Path | None = None
        self.key_file: Path | None = None
        if cert_dir is not None:
            # SANs: localhost and 127.0.0.1, so a client verifying against it as CA succeeds.
            self.cert_file, self.key_file = ensure_self_signed(cert_dir, "localhost")

        # Programmable replies.
        self.mail_reply: str | None = None
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply: str | None = None
        self._failures: list[_Failure] = []
        self._gate: asyncio.Event | None = None

        # What happened.
        self.messages: list[Received] = []
        self.attempts: Counter[str] = Counter()  # MAIL/RCPT/DATA commands seen
        self.rcpt_seen: Counter[str] = Counter()  # RCPT TO per address, accepted or not
        self.auth_failures = 0
        self.connections = 0
        self.in_data = 0  # DATA transactions currently held at the gate

        self._conns: dict[int, _Conn] = {}
        self._numbers = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None

    # -- programming -----------------------------------------------------------------------

    def fail_first(
        self, n: int, reply: str | None = "451 4.3.0 try again later", *, stage: Stage = "DATA"
    ) -> None:
        """Answer the next ``n`` commands of ``stage`` with ``reply`` (None: drop the line)."""
        self._failures.append(_Failure(n, reply, stage))

    def hold_data(self) -> None:
        """Make every DATA wait (after the message is received) until ``release_data``."""
        self._gate = asyncio.Event()

    def release_data(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    @property
    def ca_file(self) -> str:
        """The self-signed certificate, usable as the CA file of a verifying client."""
        assert self.cert_file is not None
        return str(self.cert_file)

    def delivered_to(self, address: str) -> int:
        """How many accepted messages carried this recipient."""
        return sum(1 for m in self.messages for r in m.rcpt_tos if r.lower() == address.lower())

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Sink:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if self.tls_mode != "none":
            assert self.cert_file is not None and self.key_file is not None
            context = server_context(self.cert_file, self.key_file)

        def factory() -> SMTP:
            kwargs: dict[str, Any] = {}
            if self.auth is not None:
                kwargs.update(
                    authenticator=self._authenticate,
                    auth_required=True,
                    # On an implicit-TLS socket aiosmtpd does not know it is TLS (aiosmtpd
                    # #274), and a plain sink with AUTH is what the test asked for.
                    auth_require_tls=self.tls_mode == "starttls",
                )
            with warnings.catch_warnings():
                # Expected for the implicit-TLS and plain sinks with AUTH (see above).
                warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
                protocol = SMTP(
                    _Handler(self),
                    hostname=self.hostname,
                    tls_context=context if self.tls_mode == "starttls" else None,
                    require_starttls=self.tls_mode == "starttls",
                    enable_SMTPUTF8=self.smtputf8,
                    loop=loop,
                    **kwargs,
                )
            self.connections += 1
            number = next(self._numbers)
            self._conns[id(protocol)] = _Conn(number, protocol)
            return protocol

        self._server = await loop.create_server(
            factory,
            self.host,
            0,
            ssl=context if self.tls_mode == "implicit" else None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        self.release_data()
        if self._server is not None:
            self._server.close()
            for conn in list(self._conns.values()):
                if conn.protocol.transport is not None:
                    conn.protocol.transport.close()
            await self._server.wait_closed()
            self._server = None

    # -- waiting (for a state, with a generous deadline; never a timed assertion) -----------

    async def wait_for(
        self, predicate: Any = None, *, count: int = 1, timeout: float = 30.0
    ) -> None:
        """Wait until ``predicate(sink)`` is true, or until ``count`` messages arrived."""
        await wait_until(
            (lambda: predicate(self))
            if predicate is not None
            else (lambda: len(self.messages) >= count),
            timeout=timeout,
            what=f"sink state {predicate or count}",
        )

    # -- internals --------------------------------------------------------------------------

    def _conn(self, server: SMTP) -> _Conn:
        return self._conns[id(server)]

    def _take_failure(self, stage: Stage) -> tuple[bool, str | None]:
        for failure in self._failures:
            if failure.stage == stage and failure.remaining > 0:
                failure.remaining -= 1
                return True, failure.reply
        return False, None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.auth is not None
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if (user, password) == self.auth:
                self._conn(server).auth_user = user
                return AuthResult(success=True, auth_data=user)
        self.auth_failures += 1
        # handled=False makes aiosmtpd answer 535 itself (the default sends nothing).
        return AuthResult(success=False, handled=False)


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def _programmed(self, server: SMTP, stage: Stage) -> str | None:
        self.sink.attempts[stage] += 1
        hit, reply = self.sink._take_failure(stage)
        if not hit:
            return None
        if reply is None:
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 connection dropped"  # never reaches the client
        return reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = await self._programmed(server, "MAIL") or self.sink.mail_reply
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.sink.rcpt_seen[address.lower()] += 1
        reply = await self._programmed(server, "RCPT") or self.sink.rcpt_replies.get(
            address.lower()
        )
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        sink = self.sink
        reply = await self._programmed(server, "DATA")
        if reply is not None:
            return reply
        if sink._gate is not None:
            sink.in_data += 1
            try:
                await sink._gate.wait()
            finally:
                sink.in_data -= 1
        if sink.data_reply is not None:
            return sink.data_reply
        conn = sink._conn(server)
        conn.transactions += 1
        assert server.transport is not None
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        sink.messages.append(
            Received(
                mail_from="" if envelope.mail_from in ("<>", None) else str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                data=raw,
                received_at=time.time(),
                connection=conn.number,
                tls=server.transport.get_extra_info("ssl_object") is not None,
                auth_user=conn.auth_user,
            )
        )
        return "250 2.0.0 OK: queued"

"""aiosmtpd's SMTP protocol with the relay's protocol policy on top.

What aiosmtpd leaves to us (ARCHITECTURE.md "library traps"), done here:
- DATA is read in bulk and ends only at <CRLF>.<CRLF> (RFC 5321 4.1.1.4); bare CR or LF never
  ends or splits a message. aiosmtpd reads DATA line by line, which is slower.
- Every 2xx/4xx/5xx reply carries an enhanced status code (RFC 2034 3: all but the greeting and
  the EHLO/HELO response); aiosmtpd's own replies often lack one.
- AUTH over plaintext is allowed only for ``plaintext_auth_networks``; on the implicit-TLS
  listener aiosmtpd cannot see the TLS layer, so the policy is set per connection here, never
  on a plaintext listener as a whole (aiosmtpd issues #274, #281).
- Connection limits (total and per client address) for the node as a whole, whatever its
  process count (admission asks ``services.connections``, relay.nodelimits), and a drain for
  graceful shutdown.
- Bounded sessions: the idle timer is moved only by progress (a successful AUTH, MAIL, RCPT,
  DATA and its bytes), not by NOOP, RSET, HELP or EHLO, and ``smtp.max_session_time`` ends even
  a busy session (after its transaction); RFC 5321 4.5.3.2 lets a server time out idle clients.
- Bounded memory: DATA held in memory by this process's sessions stays within
  ``smtp.data_memory_limit`` (``DataBudget``); a message that does not fit is read to its end
  and refused with 452 4.3.1, and the bytes are given back when the transaction or the
  connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay import metrics
from relay.message import dot_unstuff
from relay.policy import Reason, Refused
from relay.smtp import replies
from relay.smtp.errors import reply_for

if TYPE_CHECKING:
    from relay.directory import CredentialView
    from relay.policy import Sender
    from relay.ratelimit import Reservation

_DATA_END = b"\r\n.\r\n"
# The common path argument: <dot-atom@domain> and optional parameters.
_SIMPLE_PATH = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>\s*(.*)", re.DOTALL
)
_READ_CHUNK = 256 * 1024


class RelaySession(Session):
    """aiosmtpd's smtp_AUTH sets the deprecated ``login_data``, which logs a warning on every
    successful AUTH; keep the value without the noise."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class RelayEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.sender: Sender | None = None
        # Send-limit reservations of the accepted recipients, given back unless committed.
        self.held: list[Reservation] = []


class DataBudget:
    """DATA bytes held in memory by one process's sessions, at most ``limit`` in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def room(self) -> int:
        return self.limit - self.used

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        metrics.SMTP_DATA_BYTES.inc(n)
        return True

    def give(self, n: int) -> None:
        self.used -= n
        metrics.SMTP_DATA_BYTES.dec(n)


class RelaySMTP(SMTP):
    def __init__(
        self,
        handler: Any,
        *,
        listener: Any,
        implicit_tls: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.listener = listener  # relay.smtp.listener.SmtpServer
        self.implicit_tls = implicit_tls
        self.peer_ip = ""
        self.auth_failures = 0
        self.credential: CredentialView | None = None
        self.close_after_transaction = False
        self._closing_reply = replies.SHUTTING_DOWN
        self._plain_reply = False
        self._greeted = False
        self._idle_deadline = 0.0
        self._reading_data = False
        self._release_slot: Callable[[], None] | None = None
        self._session_timer: asyncio.TimerHandle | None = None
        self._data_held = 0  # bytes of this session's DATA counted in the listener's budget
        self.data_over_budget = False

    # -- connection lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if not first:
            # STARTTLS re-entry: same connection, nothing to count again; RFC 3207 4.2: forget
            # everything learned before TLS, AUTH included.
            self.credential = None
            return
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if peer else ""
        self._auth_require_tls = not (self.implicit_tls or self.listener.plaintext_ok(self.peer_ip))

    def connection_lost(self, error: Exception | None) -> None:
        self.give_back()
        self.release_data()
        if self._session_timer is not None:
            self._session_timer.cancel()
        if self._release_slot is not None:
            self._release_slot()
            self._release_slot = None
            self.listener.sessions.discard(self)
            self.counted(-1)
        super().connection_lost(error)

    def counted(self, change: int) -> None:
        """An admitted connection opened (1) or closed (-1): the listener's metrics."""
        metrics.SMTP_CONNECTIONS.inc(change)
        if change > 0:
            metrics.SMTP_SESSIONS.labels("smtps" if self.implicit_tls else "smtp").inc()

    async def _handle_client(self) -> None:
        # Admission by the listener's connection gate (the submission listeners': the node's
        # table, in the main process, so may be a question to it).
        release = None
        if not self.listener.draining:
            release = await self.listener.connections.admit(self.peer_ip)
        if release is not None and (self.transport is None or self.listener.draining):
            release()  # gone, or the drain began, while we asked
            release = None
            if self.transport is None:
                return
        if release is None:
            await self.push(
                replies.SHUTTING_DOWN if self.listener.draining else replies.TOO_MANY_CONNECTIONS
            )
            if self.transport is not None:
                self.transport.close()
            return
        self._release_slot = release
        self.listener.sessions.add(self)
        self.counted(1)
        if self.listener.max_session_time:
            self._session_timer = self.loop.call_later(
                self.listener.max_session_time, self._session_expired
            )
        await super()._handle_client()

    def _create_session(self) -> RelaySession:
        return RelaySession(self.loop)

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def _set_post_data_state(self) -> None:
        # The transaction ends (DATA answered, RSET, EHLO, STARTTLS): what it held goes back.
        self.give_back()
        self.release_data()
        super()._set_post_data_state()

    def give_back(self) -> None:
        """Send-limit reservations of a transaction that did not commit go back."""
        envelope = self.envelope
        if isinstance(envelope, RelayEnvelope) and envelope.held:
            held, envelope.held = envelope.held, []
            for reservation in held:
                reservation.release()

    @property
    def in_transaction(self) -> bool:
        return bool(self.envelope is not None and self.envelope.mail_from)

    def shutdown(self) -> None:
        """Graceful stop: idle sessions get 421 now, the others after their transaction."""
        self._close_after_transaction(replies.SHUTTING_DOWN)

    def _session_expired(self) -> None:
        """``smtp.max_session_time`` is up: close now when idle, else after the transaction,
        which gets one more idle period at most."""
        self._close_after_transaction(replies.SESSION_TOO_LONG)
        if self.close_after_transaction:
            self._session_timer = self.loop.call_later(
                self._timeout_duration, self.close_now, replies.SESSION_TOO_LONG
            )

    def _close_after_transaction(self, reply: str) -> None:
        if self.in_transaction:
            self.close_after_transaction = True
            self._closing_reply = reply
        else:
            self.close_now(reply)

    def close_now(self, reply: str) -> None:
        # uvloop's transports are not asyncio.WriteTransport subclasses: cast, don't isinstance.
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode() + b"\r\n")
            transport.close()

    @property
    def tls_version(self) -> str | None:
        if self.transport is None:
            return None
        ssl_object = self.transport.get_extra_info("ssl_object")
        return ssl_object.version() if ssl_object is not None else None

    # -- idle timeout -------------------------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd calls this at the connection and before every command. Only the first call
        arms the idle timer, and only DATA bytes move it from here: other commands (NOOP, RSET,
        EHLO, a failed AUTH) are not progress, or a client could hold a connection for ever.
        ``progress`` moves it. One timer and a deadline: the timer re-arms itself for the rest
        when it fires early (RFC 5321 4.5.3.2 idle limits are minutes, not microseconds)."""
        loop = self.loop
        if self._timeout_handle is None or self._timeout_handle.cancelled():
            self._idle_deadline = loop.time() + (duration or self._timeout_duration)
            self._timeout_handle = loop.call_at(self._idle_deadline, self._timeout_cb)
        elif self._reading_data:
            self._idle_deadline = loop.time() + self._timeout_duration

    def progress(self) -> None:
        """The client moved its transaction on: it has another idle period."""
        self._idle_deadline = self.loop.time() + self._timeout_duration

    def _timeout_cb(self) -> None:
        left = self._idle_deadline - self.loop.time()
        if left > 0:
            self._timeout_handle = self.loop.call_later(left, self._timeout_cb)
            return
        self.close_now(replies.IDLE_TIMEOUT)

    # -- replies ------------------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        if not self._greeted:
            self._greeted = True  # RFC 2034 3: no enhanced code on the greeting
        elif isinstance(status, str) and not self._plain_reply:
            status = replies.enhanced(status)
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        # RFC 2034 3: no enhanced codes on the EHLO response.
        self._plain_reply = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_reply = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_reply = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd parses every path with the email package's header parser and builds a
        typing.Protocol class on each call; a plain <local@domain> needs neither."""
        m = _SIMPLE_PATH.match(arg) if arg else None
        if m is not None and not self.local_part_limit:
            return m.group(1), m.group(2)
        return super()._getaddr(arg)

    # -- DATA ---------------------------------------------------------------------------------

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.DATA_NEED_RCPT)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return
        await self.push(replies.DATA_GO_AHEAD)
        self.progress()
        self._reading_data = True
        try:
            content = await self._read_data()
        finally:
            self._reading_data = False
        if content is None and self.data_over_budget:
            status = replies.DATA_NO_ROOM
            metrics.SMTP_REPLIES.labels("data", status[:3]).inc()
        elif content is None:
            status = reply_for(Refused(Reason.MESSAGE_TOO_BIG), "data", peer=self.peer_ip)
        else:
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)
        if self.close_after_transaction:
            self.close_now(self._closing_reply)

    def hold_data(self, size: int) -> bool:
        """This session's DATA now holds ``size`` bytes; False (nothing more counted) if the
        process's budget cannot cover them."""
        more = size - self._data_held
        if more > 0 and not self.listener.data_budget.take(more):
            # Refused: the rest is read and dropped, so what it held goes back now, for the
            # sessions that may still fit.
            self.release_data()
            self.data_over_budget = True
            return False
        self._data_held = max(size, self._data_held)
        return True

    def release_data(self) -> None:
        if self._data_held:
            self.listener.data_budget.give(self._data_held)
            self._data_held = 0
        self.data_over_budget = False

    async def _read_data(self) -> bytes | None:
        """The dot-unstuffed content, or None if it exceeded the size limit (all of it is still
        read, up to the terminator, so the connection stays in sync: RFC 5321 4.2.5)."""
        reader = self._reader
        limit = self.listener.max_message_size
        # A virtual CRLF in front, so an empty message's lone "." line is found the same way.
        buf = bytearray(b"\r\n")
        scanned = 0
        too_big = False
        while True:
            idx = buf.find(_DATA_END, scanned)
            if idx >= 0:
                break
            scanned = max(0, len(buf) - len(_DATA_END) + 1)
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                raise ConnectionResetError("connection closed during DATA")
            self._reset_timeout()
            if too_big:
                # Keep only a tail long enough to find the terminator across chunks.
                del buf[: max(0, len(buf) - len(_DATA_END))]
                scanned = 0
            buf += chunk
            if not too_big and (
                len(buf) > limit + 2 + len(_DATA_END) or not self.hold_data(len(buf))
            ):
                too_big = True
        leftover = bytes(buf[idx + len(_DATA_END) :])
        if leftover:
            # Pipelined commands after the terminator (RFC 2920) go back to the reader.
            reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
        if too_big:
            return None
        del buf[idx + 2 :]  # keep the last line's CRLF
        return dot_unstuff(buf)[2:]


async def drain(
    servers: Iterable[asyncio.Server],
    sessions: set[Any],
    timeout: float,
    hurry: asyncio.Event | None = None,
) -> int:
    """Stop accepting; idle sessions get 421 now, busy ones after their transaction; after
    ``timeout`` (or when ``hurry`` is set) the rest are cut. Returns how many were cut."""
    servers = list(servers)
    for server in servers:
        server.close()
    for session in list(sessions):
        session.shutdown()
    hurry = hurry or asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sessions and not hurry.is_set() and loop.time() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), 0.05)
    cut = len(sessions)
    for session in list(sessions):
        transport = cast(asyncio.WriteTransport | None, session.transport)
        if transport is not None:
            transport.abort()
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)
    return cut


def plaintext_networks(networks: list[str]) -> Any:
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]

    def allowed(ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        if mapped is not None:
            addr = mapped
        return any(addr in net for net in nets)

    return allowed


__all__ = ["DataBudget", "RelayEnvelope", "RelaySMTP", "RelaySession", "plaintext_networks"]

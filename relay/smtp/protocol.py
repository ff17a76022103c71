"""aiosmtpd's SMTP protocol with the relay's protocol policy on top.

What aiosmtpd leaves to us (ARCHITECTURE.md "library traps"), done here:
- DATA is read in bulk and ends only at <CRLF>.<CRLF> (RFC 5321 4.1.1.4); bare CR or LF never
  ends or splits a message. aiosmtpd reads DATA line by line, which is slower.
- Every 2xx/4xx/5xx reply carries an enhanced status code (RFC 2034 3: all but the greeting and
  the EHLO/HELO response); aiosmtpd's own replies often lack one.
- AUTH over plaintext is allowed only for ``plaintext_auth_networks``; on the implicit-TLS
  listener aiosmtpd cannot see the TLS layer, so the policy is set per connection here, never
  on a plaintext listener as a whole (aiosmtpd issues #274, #281).
- Connection limits (total and per client address), and a drain for graceful shutdown.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections import Counter
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


class ConnectionLimits:
    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.open = 0
        self.by_ip: Counter[str] = Counter()

    def acquire(self, ip: str) -> bool:
        if self.open >= self.total or self.by_ip[ip] >= self.per_ip:
            return False
        self.open += 1
        self.by_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.open -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]


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
        self.admitted = False
        self.auth_failures = 0
        self.credential: CredentialView | None = None
        self.close_after_transaction = False
        self._plain_reply = False
        self._greeted = False
        self._idle_deadline = 0.0

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
        self.admitted = not self.listener.draining and self.listener.limits.acquire(self.peer_ip)
        if self.admitted:
            self.listener.sessions.add(self)
            metrics.SMTP_CONNECTIONS.inc()
            metrics.SMTP_SESSIONS.labels("smtps" if self.implicit_tls else "smtp").inc()

    def connection_lost(self, error: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.listener.limits.release(self.peer_ip)
            self.listener.sessions.discard(self)
            metrics.SMTP_CONNECTIONS.dec()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if not self.admitted:
            await self.push(
                replies.SHUTTING_DOWN if self.listener.draining else replies.TOO_MANY_CONNECTIONS
            )
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def _create_session(self) -> RelaySession:
        return RelaySession(self.loop)

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    @property
    def in_transaction(self) -> bool:
        return bool(self.envelope is not None and self.envelope.mail_from)

    def shutdown(self) -> None:
        """Graceful stop: idle sessions get 421 now, the others after their transaction."""
        if self.in_transaction:
            self.close_after_transaction = True
        else:
            self.close_now(replies.SHUTTING_DOWN)

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
        """aiosmtpd cancels and re-creates a timer on every command. Keep one timer and a
        deadline instead: a command only moves the deadline; the timer re-arms itself for the
        rest when it fires early (RFC 5321 4.5.3.2 idle limits are minutes, not microseconds)."""
        loop = self.loop
        self._idle_deadline = loop.time() + (duration or self._timeout_duration)
        if self._timeout_handle is None or self._timeout_handle.cancelled():
            self._timeout_handle = loop.call_at(self._idle_deadline, self._timeout_cb)

    def _timeout_cb(self) -> None:
        left = self._idle_deadline - self.loop.time()
        if left > 0:
            self._timeout_handle = self.loop.call_later(left, self._timeout_cb)
            return
        super()._timeout_cb()

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
        content = await self._read_data()
        if content is None:
            status = reply_for(Refused(Reason.MESSAGE_TOO_BIG), "data")
        else:
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)
        if self.close_after_transaction:
            self.close_now(replies.SHUTTING_DOWN)

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
            if not too_big and len(buf) > limit + 2 + len(_DATA_END):
                too_big = True
        leftover = bytes(buf[idx + len(_DATA_END) :])
        if leftover:
            # Pipelined commands after the terminator (RFC 2920) go back to the reader.
            reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
        if too_big:
            return None
        del buf[idx + 2 :]  # keep the last line's CRLF
        return dot_unstuff(buf)[2:]


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


__all__ = ["ConnectionLimits", "RelayEnvelope", "RelaySMTP", "RelaySession", "plaintext_networks"]

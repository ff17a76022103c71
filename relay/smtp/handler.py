"""aiosmtpd handler hooks: AUTH, EHLO, MAIL, RCPT, DATA, and the exception reply.

AUTH PLAIN/LOGIN are async methods here rather than an aiosmtpd ``authenticator`` (which is
synchronous and must not do I/O); they answer 535 5.7.8 themselves on failure, since an
AuthResult(success=False) with the default ``handled`` would leave the client hanging, and
close the connection with 421 4.7.0 after ``max_auth_failures``. Failures are also counted
across connections (relay.authlimit): past its limits, AUTH gets 421 4.7.0 without the password
being checked.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from typing import Any

import structlog
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

from relay import metrics, policy
from relay.addresses import ascii_address, has_control_chars
from relay.authlimit import FailureThrottle
from relay.policy import Reason, Refused
from relay.queue.model import NewEvent
from relay.services import Services
from relay.smtp import replies
from relay.smtp.errors import reply_for
from relay.smtp.protocol import RelayEnvelope, RelaySMTP
from relay.submit import Origin, Submitter

log = structlog.get_logger("relay.smtp")


class RelayHandler:
    def __init__(self, services: Services, submitter: Submitter) -> None:
        self.services = services
        self.settings = services.settings
        self.directory = services.directory
        self.submitter = submitter
        smtp = services.settings.smtp
        self.auth_throttle = FailureThrottle(
            services.limiter,
            "smtp",
            smtp.auth_failure_window,
            smtp.auth_max_failures_per_ip,
            smtp.auth_max_failures_per_user,
        )

    # -- greeting -------------------------------------------------------------------------

    async def handle_EHLO(
        self, server: RelaySMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        # The EHLO name stays ASCII (an A-label domain or an address literal), as before
        # SMTPUTF8 made command arguments UTF-8: it goes into the Received header.
        if has_control_chars(hostname) or len(hostname) > 255 or not hostname.isascii():
            return [replies.EHLO_BAD]
        session.host_name = hostname
        extra = [
            replies.EHLO_SIZE.format(size=self.settings.smtp.max_message_size),
            replies.EHLO_PIPELINING,  # DATA leftovers go back to the reader
            replies.EHLO_ENHANCED_CODES,
        ]
        return responses[:-1] + extra + responses[-1:]

    async def handle_HELO(
        self, server: RelaySMTP, session: Any, envelope: Any, hostname: str
    ) -> str:
        if has_control_chars(hostname) or len(hostname) > 255 or not hostname.isascii():
            return replies.EHLO_BAD
        session.host_name = hostname
        return replies.HELO_OK.format(hostname=server.hostname)

    # -- AUTH (RFC 4954, RFC 4616) -----------------------------------------------------------

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                await server.push(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push(replies.AUTH_BAD_PLAIN)
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth(server.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                await server.push(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._authenticate(server, login, password)

    async def _authenticate(self, server: RelaySMTP, login: bytes, password: bytes) -> AuthResult:
        username = login.decode("utf-8", "replace")
        held_back = await self.auth_throttle.check(username, server.peer_ip)
        if held_back is not None:
            metrics.SMTP_AUTH.labels("throttled").inc()
            metrics.AUTH_THROTTLED.labels("smtp", held_back).inc()
            log.info(
                "auth refused: too many failures",
                peer=server.peer_ip,
                username=username[:64],
                scope=held_back,
            )
            server.close_now(replies.AUTH_THROTTLED)
            return AuthResult(success=False, handled=True)
        try:
            cred = await policy.authenticate(
                self.directory, username, password.decode("utf-8", "replace")
            )
        except Refused as exc:
            await self.auth_throttle.failed(username, server.peer_ip)
            metrics.SMTP_AUTH.labels("failure").inc()
            server.auth_failures += 1
            log.info(
                "auth failed",
                peer=server.peer_ip,
                username=username[:64],
                reason=exc.reason.value,
                failures=server.auth_failures,
            )
            if server.auth_failures >= self.settings.smtp.max_auth_failures:
                server.close_now(replies.AUTH_TOO_MANY)
                return AuthResult(success=False, handled=True)
            # RFC 4954 6: 535 whatever the reason (a deleted domain's credential included).
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        except Exception as exc:  # storage trouble: temporary, the client retries
            await self.auth_throttle.undecided(username, server.peer_ip)
            await server.push(reply_for(exc, "auth", peer=server.peer_ip, username=username[:64]))
            return AuthResult(success=False, handled=True)
        metrics.SMTP_AUTH.labels("success").inc()
        server.credential = cred
        server.progress()
        await self.auth_throttle.succeeded(username, server.peer_ip)
        return AuthResult(
            success=True, auth_data=LoginPassword(login, b""), message=replies.AUTH_OK
        )

    # -- transaction ----------------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Any,
        envelope: RelayEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        try:
            for opt in mail_options:
                key, _, value = opt.partition("=")
                # RFC 1870: refuse at MAIL what would be refused after DATA anyway.
                if key == "SIZE" and value.isdigit():
                    policy.check_size(self.settings, int(value))
                    if int(value) > server.listener.data_budget.room():
                        return replies.DATA_NO_ROOM  # RFC 1870 6.1: not now, try later
            assert server.credential is not None  # auth_required: aiosmtpd answered 530 before
            utf8 = envelope.smtp_utf8
            if not address.isascii():
                if not utf8:
                    return replies.NEEDS_SMTPUTF8
                # An internationalized domain is kept in its A-label form, as sender domains
                # are; only a UTF-8 local part still needs SMTPUTF8 downstream.
                address = ascii_address(address)
            sender = await policy.check_sender(
                self.directory, server.credential, address, utf8=utf8
            )
        except Exception as exc:
            cred = server.credential
            if isinstance(exc, Refused) and exc.reason is Reason.CREDENTIAL_INVALID:
                session.authenticated = False  # the credential is gone: AUTH again
                server.credential = None
            return reply_for(
                exc,
                "mail",
                peer=server.peer_ip,
                username=cred.username if cred is not None else None,
                mail_from=address,
            )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.sender = sender
        server.progress()
        return replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Any,
        envelope: RelayEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        sender = envelope.sender
        assert sender is not None
        utf8 = envelope.smtp_utf8
        if not address.isascii():
            if not utf8:
                return replies.NEEDS_SMTPUTF8
            address = ascii_address(address)  # as at MAIL: A-labels, so suppressions match
        try:
            held = await policy.check_recipient(
                self.directory,
                self.services.limiter,
                self.settings,
                sender.user,
                address,
                len(envelope.rcpt_tos),
                utf8=utf8,
            )
        except Exception as exc:
            reply = reply_for(
                exc,
                "rcpt",
                peer=server.peer_ip,
                username=sender.credential.username,
                mail_from=sender.mail_from,
                rcpt=address,
            )
            if isinstance(exc, Refused) and exc.reason is Reason.RECIPIENT_SUPPRESSED:
                self.submitter.writer.record(
                    NewEvent(
                        user_id=sender.user.id,
                        domain_id=sender.domain.id,
                        event="rejected",
                        recipient=address.lower(),
                        smtp_code=550,
                        smtp_response=reply,
                    )
                )
            return reply
        if held is not None:
            envelope.held.append(held)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        server.progress()
        return replies.RCPT_OK

    async def handle_DATA(self, server: RelaySMTP, session: Any, envelope: RelayEnvelope) -> str:
        sender = envelope.sender
        assert sender is not None and isinstance(envelope.content, bytes)
        try:
            _, message = await policy.check_message(
                self.settings, envelope.content, sender.domain.name
            )
        except Exception as exc:
            # The session gives the reservations back.
            return reply_for(exc, "data", **_data_session(server, sender, envelope))
        # From here the commit decides: its reservations belong to the message, given back
        # only if the commit fails (not if this session is cut while it runs: it may commit).
        held, envelope.held = envelope.held, []
        try:
            queue_id = await self.submitter.accept(
                user=sender.user,
                domain=sender.domain,
                mail_from=sender.mail_from,
                recipients=list(envelope.rcpt_tos),
                message=message,
                origin=Origin(
                    source="smtp",
                    client_ip=server.peer_ip,
                    helo=session.host_name or "unknown",
                    tls=server.tls_version,
                    authenticated=True,
                    credential_id=sender.credential.id,
                ),
            )
        except Exception as exc:
            for reservation in held:
                reservation.release()
            return reply_for(exc, "data", **_data_session(server, sender, envelope))
        return replies.QUEUED.format(id=queue_id)

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's last resort: never 500 with the exception text."""
        return reply_for(error, "protocol")


def _data_session(server: RelaySMTP, sender: Any, envelope: RelayEnvelope) -> dict[str, Any]:
    """What a DATA refusal's log line says about the transaction."""
    return {
        "peer": server.peer_ip,
        "username": sender.credential.username,
        "mail_from": sender.mail_from,
        "recipients": len(envelope.rcpt_tos),
    }

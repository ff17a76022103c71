"""aiosmtpd handler hooks: AUTH, EHLO, MAIL, RCPT, DATA, and the exception reply.

AUTH PLAIN/LOGIN are async methods here rather than an aiosmtpd ``authenticator`` (which is
synchronous and must not do I/O); they answer 535 5.7.8 themselves on failure, since an
AuthResult(success=False) with the default ``handled`` would leave the client hanging, and
close the connection with 421 4.7.0 after ``max_auth_failures``.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from typing import Any

import structlog
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

from relay import checks, metrics
from relay.addresses import has_control_chars
from relay.queue.model import NewEvent
from relay.services import Services
from relay.smtp import replies
from relay.smtp.errors import Reject, reply_for
from relay.smtp.protocol import RelayEnvelope, RelaySMTP
from relay.submit import Origin, Submitter

log = structlog.get_logger("relay.smtp")


def _rejected(stage: str, reply: str) -> str:
    metrics.SMTP_REPLIES.labels(stage, reply[:3]).inc()
    return reply


class RelayHandler:
    def __init__(self, services: Services, submitter: Submitter) -> None:
        self.services = services
        self.settings = services.settings
        self.directory = services.directory
        self.submitter = submitter

    # -- greeting -------------------------------------------------------------------------

    async def handle_EHLO(
        self, server: RelaySMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        if has_control_chars(hostname) or len(hostname) > 255:
            return [replies.EHLO_BAD]
        session.host_name = hostname
        extra = [
            f"250-SIZE {self.settings.smtp.max_message_size}",
            "250-PIPELINING",  # RFC 2920; DATA leftovers go back to the reader
            "250-ENHANCEDSTATUSCODES",  # RFC 2034
        ]
        return responses[:-1] + extra + responses[-1:]

    async def handle_HELO(
        self, server: RelaySMTP, session: Any, envelope: Any, hostname: str
    ) -> str:
        if has_control_chars(hostname) or len(hostname) > 255:
            return replies.EHLO_BAD
        session.host_name = hostname
        return f"250 {server.hostname}"

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
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split auth value")
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
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._authenticate(server, login, password)

    async def _authenticate(self, server: RelaySMTP, login: bytes, password: bytes) -> AuthResult:
        username = login.decode("utf-8", "replace")
        try:
            cred = await checks.authenticate(
                self.directory, username, password.decode("utf-8", "replace")
            )
        except Reject:
            metrics.SMTP_AUTH.labels("failure").inc()
            server.auth_failures += 1
            log.info(
                "auth failed",
                peer=server.peer_ip,
                username=username[:64],
                failures=server.auth_failures,
            )
            if server.auth_failures >= self.settings.smtp.max_auth_failures:
                server.close_now(replies.AUTH_TOO_MANY)
                return AuthResult(success=False, handled=True)
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        except Exception as exc:  # storage trouble: temporary, the client retries
            await server.push(reply_for(exc, stage="auth"))
            return AuthResult(success=False, handled=True)
        metrics.SMTP_AUTH.labels("success").inc()
        server.credential = cred
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
                if (
                    key == "SIZE"
                    and value.isdigit()
                    and int(value) > self.settings.smtp.max_message_size
                ):
                    raise Reject(replies.TOO_BIG)
            assert server.credential is not None  # auth_required: aiosmtpd answered 530 before
            sender = await checks.check_mail(self.directory, server.credential, address)
        except Exception as exc:
            reply = reply_for(exc, stage="mail")
            if reply == replies.AUTH_INVALID:
                session.authenticated = False  # the credential is gone: AUTH again
                server.credential = None
            return _rejected("mail", reply)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.sender = sender
        return "250 2.1.0 Sender OK"

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
        try:
            await checks.check_rcpt(
                self.directory,
                self.services.limiter,
                self.settings,
                sender,
                address,
                len(envelope.rcpt_tos),
            )
        except Exception as exc:
            reply = reply_for(exc, stage="rcpt")
            if reply == replies.RCPT_SUPPRESSED:
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
            return _rejected("rcpt", reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: RelaySMTP, session: Any, envelope: RelayEnvelope) -> str:
        sender = envelope.sender
        assert sender is not None and isinstance(envelope.content, bytes)
        try:
            _, message = checks.check_content(self.settings, envelope.content, sender.domain.name)
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
            return _rejected("data", reply_for(exc, stage="data"))
        return replies.QUEUED.format(id=queue_id)

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's last resort: never 500 with the exception text."""
        return reply_for(error, stage="protocol")

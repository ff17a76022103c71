"""One SMTP transaction on a pooled connection, with a reply for every recipient.

MAIL FROM is the stored envelope sender (the null reverse-path ``<>`` for bounces, RFC 5321
4.5.5), one RCPT per recipient (a refused recipient does not stop the others), then DATA with
the stored bytes exactly as signed: aiosmtplib only dot-stuffs them (RFC 5321 4.5.2) and, since
the queue holds CRLF-normalized messages, rewrites nothing else.

Failures of the connection itself (dropped, timed out, 421) are not replies: they end the
transaction with ``failover`` set when the message content was not handed over yet, so the
caller may try the same recipients on the next delivery server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import aiosmtplib

from mta.errors import TRANSACTION_FAILURES, ServerClosing
from mta.pool import Connection
from mta.powermta.inject import injection_body  # PowerMTA (pmta)

# RFC 3463 enhanced status code at the start of the reply text: class.subject.detail.
ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


@dataclass(frozen=True, slots=True)
class Reply:
    code: int | None  # None: no reply (the connection failed)
    text: str
    stage: str  # "connect" | "MAIL" | "RCPT" | "DATA" | "route" | "local"
    # The reply is about this recipient alone (RCPT, or DATA of a one-recipient transaction),
    # so an addressing status in it says something about the recipient's mailbox.
    per_recipient: bool = False
    # Not an answer to the transaction but a failure around it (connect, TLS, AUTH, EHLO,
    # dropped line): always temporary for the recipients, whatever its code.
    failure: bool = False

    @property
    def line(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text

    @property
    def enhanced(self) -> tuple[int, int, int] | None:
        found = ENHANCED.match(self.text)
        return (int(found[1]), int(found[2]), int(found[3])) if found else None

    @property
    def hard_bounce(self) -> bool:
        """A permanent addressing failure (RFC 3463 X.1.x) of the destination mailbox.

        X.1.7 and X.1.8 are about the sender's address, not the recipient's.
        """
        if self.code is None or not 500 <= self.code < 600 or not self.per_recipient:
            return False
        status = self.enhanced
        return status is not None and status[:2] == (5, 1) and status[2] not in (7, 8)


@dataclass
class Result:
    replies: dict[int, Reply] = field(default_factory=dict)  # recipient index -> reply
    # The connection failed before the content was handed over: the recipients without a
    # reply may be tried on another server right away.
    failover: bool = False
    error: Reply | None = None  # the connection failure, for recipients without a reply
    # A reused connection failed on its first command: most likely the server closed it
    # while idle. Worth one retry on a fresh connection to the same server.
    stale: bool = False


def is_null_sender(mail_from: str) -> bool:
    return mail_from.strip() in ("", "<>")


def _needs_utf8(addresses: list[str]) -> bool:
    return any(not a.isascii() for a in addresses)


def connection_failure(exc: BaseException, stage: str) -> Reply:
    code = getattr(exc, "code", None)
    text = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    return Reply(code if isinstance(code, int) else None, text, stage, failure=True)


async def send(
    conn: Connection, mail_from: str, rcpts: list[str], body: bytes, *, message_id: str = ""
) -> Result:
    """Run one transaction for ``rcpts`` (indexes in the result refer to this list)."""
    # PowerMTA (pmta): X-Job / X-Virtual-MTA for a PowerMTA server, before SIZE is computed.
    body = injection_body(conn.server, message_id, body)
    smtp = conn.smtp
    result = Result()
    replies = result.replies
    sender = "" if is_null_sender(mail_from) else mail_from.strip()
    stage = "MAIL"

    def everyone(reply: Reply) -> Result:
        replies.update(dict.fromkeys(range(len(rcpts)), reply))
        return result

    try:
        if smtp.is_ehlo_or_helo_needed:
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPHeloError:
                await smtp.helo()  # RFC 5321 4.1.1.1: fall back for servers without ESMTP
        options: list[str] = []
        utf8 = _needs_utf8([sender, *rcpts])
        if utf8:
            if not smtp.supports_extension("smtputf8"):
                # RFC 6531 3.2: without the server's SMTPUTF8 the address cannot be sent.
                return everyone(
                    Reply(553, "5.6.7 delivery server does not support SMTPUTF8", "local")
                )
            options.append("SMTPUTF8")
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(body)}")  # RFC 1870: lets the server refuse early
        if smtp.supports_extension("8bitmime") and not body.isascii():
            options.append("BODY=8BITMIME")  # RFC 6152
        encoding = "utf-8" if utf8 else "ascii"
        try:
            await _mail(smtp, sender, options, encoding)
        except aiosmtplib.SMTPSenderRefused as exc:
            if exc.code == 421:
                raise ServerClosing(exc) from exc
            return everyone(Reply(exc.code, exc.message, "MAIL"))
        except ValueError as exc:  # not sendable on a command line (aiosmtplib's check)
            return everyone(Reply(553, f"5.1.7 {exc}", "local"))
        conn.reused = False  # the connection answered: not stale
        stage = "RCPT"
        accepted: list[int] = []
        for i, rcpt in enumerate(rcpts):
            try:
                await _rcpt(smtp, rcpt, encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                if exc.code == 421:
                    raise ServerClosing(exc) from exc
                replies[i] = Reply(exc.code, exc.message, "RCPT", per_recipient=True)
            except ValueError as exc:
                replies[i] = Reply(553, f"5.1.3 {exc}", "local")
            else:
                accepted.append(i)
        if not accepted:
            await _reset(conn)
            return result
        stage = "DATA"
        single = len(accepted) == 1
        try:
            response = await smtp.data(body)
        except aiosmtplib.SMTPDataError as exc:
            if exc.code == 421:
                raise ServerClosing(exc) from exc
            data_reply = Reply(exc.code, exc.message, "DATA", single)
            # Refused at DATA itself (before 354) the transaction may still be open.
            await _reset(conn)
        else:
            data_reply = Reply(response.code, response.message, "DATA", single)
            conn.messages += 1
        for i in accepted:
            replies[i] = data_reply
        return result
    except TRANSACTION_FAILURES as exc:
        conn.broken = True
        cause = exc.__cause__ if isinstance(exc, ServerClosing) and exc.__cause__ else exc
        result.error = connection_failure(cause, stage)
        # After DATA the server may hold the message: not handed elsewhere in this attempt.
        result.failover = stage != "DATA"
        result.stale = conn.reused and stage == "MAIL"
        # Refusals given before the failure stand; everyone else gets the error.
        return result


# An address aiosmtplib's quote_address would send unchanged inside <>. For those, MAIL and
# RCPT skip its email.utils.parseaddr round (a tenth of a delivery worker's time): the bytes
# on the wire are the same. Anything else goes through aiosmtplib's own parsing and checks.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\Z")


async def _mail(smtp: aiosmtplib.SMTP, sender: str, options: list[str], encoding: str) -> None:
    if sender and not _PLAIN_ADDRESS.match(sender):
        await smtp.mail(sender, options=options, encoding=encoding)
        return
    response = await smtp.execute_command(
        b"MAIL", b"FROM:<" + sender.encode() + b">", *(o.encode() for o in options)
    )
    if response.code != 250:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)


async def _rcpt(smtp: aiosmtplib.SMTP, recipient: str, encoding: str) -> None:
    if not _PLAIN_ADDRESS.match(recipient):
        await smtp.rcpt(recipient, encoding=encoding)
        return
    response = await smtp.execute_command(b"RCPT", b"TO:<" + recipient.encode() + b">")
    # RFC 5321 4.1.1.3: 250 or 251 (will forward) accept the recipient.
    if response.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)


async def _reset(conn: Connection) -> None:
    """RSET after an unfinished transaction so the connection can carry the next one."""
    try:
        await conn.smtp.rset()
    except TRANSACTION_FAILURES:
        conn.broken = True

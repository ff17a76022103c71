"""A Postfix policy delegation server (SMTPD_POLICY_README) answering the relay-domain question.

    smtpd_recipient_restrictions = ..., reject_unauth_destination,
        check_policy_service { inet:127.0.0.1:10029, timeout=10s,
                               default_action=451 4.3.5 policy service unavailable }

Postfix sends ``name=value`` lines ended by an empty line, ``request=smtpd_access_policy``
among them, and waits for one ``action=...`` line and an empty line; the connection is
reused. At the RCPT stage the recipient's domain decides:

- a relay domain (the same answer as the socketmap and the HTTP check): ``DUNNO``: this server
  never grants anything, so wherever it is placed it cannot make Postfix an open relay
  (SMTPD_POLICY_README's warning); Postfix's other restrictions decide the rest;
- not a relay domain: ``REJECT 5.7.1 Relay access denied``;
- cannot tell: ``DEFER_IF_PERMIT 4.3.0 ...`` (a 4xx if the mail would otherwise be accepted).

Any other stage, or no recipient: ``DUNNO``. A request without ``request=smtpd_access_policy``
or over the size limits gets no answer: the connection is closed (the README's rule for a
server in trouble; Postfix then applies its default_action).
"""

from __future__ import annotations

import asyncio

from mta.postfix.answers import RelayDomainAnswers
from mta.postfix.listener import LookupListener, ProtocolError
from relay import metrics
from relay.config import MxSettings

MAX_LINE = 4096  # one attribute line (certificate subjects are the longest in practice)
MAX_ATTRIBUTES = 128
MAX_REQUEST = 64 * 1024

REJECT = "REJECT 5.7.1 Relay access denied"
DEFER = "DEFER_IF_PERMIT 4.3.0 Relay domain list unavailable, try again later"
DUNNO = "DUNNO"


async def read_request(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """The next request's attributes (the first value of a repeated name); None at a clean
    end of stream. Raises ProtocolError."""
    attributes: dict[str, str] = {}
    size = 0
    count = 0
    while True:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and count == 0:
                return None
            raise ProtocolError("truncated request") from None
        except asyncio.LimitOverrunError:
            raise ProtocolError("attribute line too long") from None
        line = raw.rstrip(b"\n").rstrip(b"\r")
        if not line:
            return attributes
        count += 1
        size += len(raw)
        if count > MAX_ATTRIBUTES or size > MAX_REQUEST:
            raise ProtocolError("request too large")
        name, sep, value = line.decode("utf-8", "replace").partition("=")
        if not sep:
            raise ProtocolError("attribute line without '='")
        attributes.setdefault(name, value)


class PolicyServer(LookupListener):
    kind = "policy"
    stream_limit = MAX_LINE

    def __init__(self, listen: list[str], settings: MxSettings, answers: RelayDomainAnswers):
        super().__init__(listen, settings)
        self.answers = answers
        self._counters = {
            result: metrics.MX_LOOKUPS.labels(self.kind, result)
            for result in ("found", "notfound", "temp", "skipped")
        }

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            async with asyncio.timeout(self.settings.lookup_idle_timeout):
                request = await read_request(reader)
            if request is None:
                return
            if request.get("request") != "smtpd_access_policy":
                raise ProtocolError("not an smtpd_access_policy request")
            writer.write(f"action={await self.action(request)}\n\n".encode())
            await writer.drain()

    async def action(self, request: dict[str, str]) -> str:
        recipient = request.get("recipient", "")
        if request.get("protocol_state", "").upper() != "RCPT" or not recipient:
            self._counters["skipped"].inc()
            return DUNNO
        found = await self.answers.lookup(recipient)
        self._counters[found.verdict].inc()
        if found.verdict == "found":
            return DUNNO
        if found.verdict == "temp":
            return DEFER
        return REJECT

"""Postfix's socketmap table (socketmap_table(5)) for the map ``relay_domains``.

    relay_domains = socketmap:inet:127.0.0.1:10027:relay_domains      (Postfix main.cf)

One request per netstring (http://cr.yp.to/proto/netstrings.txt): ``<name> <key>``; one
answer per request, also a netstring: ``OK <domain>`` when the relay accepts mail for the key
(a domain or an address, see ``answers.py``), ``NOTFOUND `` when it does not, ``TEMP <reason>``
when it cannot tell, ``PERM <reason>`` for a map name other than ``relay_domains``. Postfix
keeps the connection for further requests.
"""

from __future__ import annotations

import asyncio

from mta.postfix.answers import RelayDomainAnswers
from mta.postfix.listener import LookupListener, ProtocolError
from relay import metrics
from relay.config import MxSettings

MAP_NAME = "relay_domains"
# A request is "<name> <key>"; keys are domains or addresses. Longer requests are refused.
MAX_REQUEST = 2048
_MAX_DIGITS = len(str(MAX_REQUEST))


def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


async def read_netstring(reader: asyncio.StreamReader, max_length: int) -> bytes | None:
    """The next netstring's payload; None at a clean end of stream. Raises ProtocolError."""
    try:
        head = await reader.readuntil(b":")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("truncated netstring") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("netstring length too long") from None
    digits = head[:-1]
    # Netstrings: decimal digits, no leading zeros (except "0" itself).
    if (
        not digits.isdigit()
        or len(digits) > _MAX_DIGITS
        or (len(digits) > 1 and digits.startswith(b"0"))
    ):
        raise ProtocolError("bad netstring length")
    length = int(digits)
    if length > max_length:
        raise ProtocolError(f"request of {length} bytes")
    payload = await reader.readexactly(length + 1)
    if payload[-1:] != b",":
        raise ProtocolError("netstring not terminated by ','")
    return payload[:-1]


class SocketmapServer(LookupListener):
    kind = "socketmap"

    def __init__(self, listen: list[str], settings: MxSettings, answers: RelayDomainAnswers):
        super().__init__(listen, settings)
        self.answers = answers
        self._counters = {
            result: metrics.MX_LOOKUPS.labels(self.kind, result)
            for result in ("found", "notfound", "temp", "perm")
        }

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            async with asyncio.timeout(self.settings.lookup_idle_timeout):
                request = await read_netstring(reader, MAX_REQUEST)
            if request is None:
                return
            writer.write(netstring(await self.answer(request)))
            await writer.drain()

    async def answer(self, request: bytes) -> bytes:
        name, sep, key = request.decode("utf-8", "replace").partition(" ")
        if not sep or name != MAP_NAME:
            self._counters["perm"].inc()
            return b"PERM unknown map name, expected " + MAP_NAME.encode()
        found = await self.answers.lookup(key)
        self._counters[found.verdict].inc()
        if found.verdict == "found":
            return b"OK " + found.value.encode("utf-8")
        if found.verdict == "temp":
            return b"TEMP " + found.value.encode("utf-8")
        return b"NOTFOUND "

"""The SMTP sink every target delivers to, and the "bare aiosmtpd" baseline itself.

Run as ``python -m bench.sink PORT`` (0 = any free port): an aiosmtpd server on 127.0.0.1 with
uvloop that keeps nothing but counters, so it costs the same CPU whichever target feeds it.
It accepts AUTH PLAIN/LOGIN from anyone without TLS (the bare-sink baseline sends the same
session as the relay gets), and counts each (X-Bench-Id, recipient) pair once, which is how the
benchmark proves that every accepted message arrived exactly once.

Control is a line protocol on stdin/stdout, one JSON object per reply:
  ``ready <port>``   printed once listening
  ``reset <prefix>`` start counting messages whose X-Bench-Id starts with prefix
  ``stats``          the counters (and this process' CPU seconds and the monotonic clock)
  ``pairs``          every distinct (X-Bench-Id, recipient) pair of this run, as "id rcpt"
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from bench.loadgen import BENCH_ID_HEADER, loop_factory

HOSTNAME = "sink.bench.test"
SETS = ("ids", "pairs")


@dataclass
class Tally:
    prefix: str = ""
    messages: int = 0  # DATA transactions carrying this run's prefix
    distinct: int = 0  # distinct X-Bench-Id values of this run: messages delivered
    deliveries: int = 0  # distinct (id, recipient) pairs of this run
    duplicates: int = 0  # pairs seen again (a duplicate delivery)
    dkim_signed: int = 0  # messages of this run with a DKIM-Signature header
    one_click: int = 0  # messages of this run with List-Unsubscribe-Post (tracking applied)
    strays: int = 0  # messages of another run (a late delivery) or without an id
    first: float = 0.0  # monotonic time of the first and last message of this run
    last: float = 0.0
    ids: set[bytes] = field(default_factory=set, repr=False)
    pairs: set[bytes] = field(default_factory=set, repr=False)

    def public(self) -> dict[str, Any]:
        # Not asdict(): it would deep-copy the id sets on every poll.
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SETS}


class CountingHandler:
    def __init__(self) -> None:
        self.tally = Tally()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.content
        assert isinstance(data, bytes)
        self.count(data, envelope.rcpt_tos)
        return "250 2.0.0 Ok"

    def count(self, data: bytes, rcpt_tos: list[str]) -> None:
        tally = self.tally
        end = data.find(b"\r\n\r\n")
        head = data[: end if end >= 0 else len(data)]
        start = head.find(BENCH_ID_HEADER)
        if start < 0:
            tally.strays += 1
            return
        start += len(BENCH_ID_HEADER)
        stop = head.find(b"\r\n", start)
        bench_id = head[start : stop if stop >= 0 else len(head)].strip()
        if not tally.prefix or not bench_id.startswith(tally.prefix.encode() + b"."):
            tally.strays += 1
            return
        now = time.monotonic()
        if not tally.messages:
            tally.first = now
        tally.last = now
        tally.messages += 1
        lowered = head.lower()
        if b"dkim-signature:" in lowered:
            tally.dkim_signed += 1
        if b"\nlist-unsubscribe-post:" in lowered:
            tally.one_click += 1
        if bench_id not in tally.ids:
            tally.ids.add(bench_id)
            tally.distinct += 1
        for rcpt in rcpt_tos:
            key = bench_id + b" " + rcpt.encode()
            if key in tally.pairs:
                tally.duplicates += 1
            else:
                tally.pairs.add(key)
                tally.deliveries += 1


def accept_any(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    return AuthResult(success=True)


async def start_server(handler: CountingHandler, port: int = 0) -> asyncio.Server:
    """The sink's listener on 127.0.0.1 (port 0: any free port), in the running loop."""
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname=HOSTNAME,  # else aiosmtpd calls getfqdn() for every connection
            data_size_limit=None,
            authenticator=accept_any,
            auth_require_tls=False,
            timeout=120,
            loop=loop,
        )

    return await loop.create_server(factory, "127.0.0.1", port, backlog=1024)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = CountingHandler()
    server = await start_server(handler, port)
    bound = server.sockets[0].getsockname()[1]
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    reply({"ready": bound})
    while line := await reader.readline():
        command, _, arg = line.decode().strip().partition(" ")
        if command == "reset":
            handler.tally = Tally(prefix=arg)
            reply({"ok": True})
        elif command == "pairs":
            reply({"pairs": [p.decode() for p in handler.tally.pairs]})
        elif command == "stats":
            reply({**handler.tally.public(), "cpu": time.process_time(), "now": time.monotonic()})
        else:
            reply({"error": f"unknown command {command!r}"})
    server.close()


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    # aiosmtpd warns about its deprecated login_data on every AUTH; nothing else is logged.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(port))


if __name__ == "__main__":
    main()

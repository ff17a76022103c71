"""The webhook receiver of bench/webhooks.py: an HTTP/1.1 server on 127.0.0.1 that counts posts.

Run as ``python -m bench.webhook_receiver`` (the benchmark starts it). Every POST is answered
204 and counted once per ``webhook-id``; its signature is checked against the key given with
``reset`` (HMAC-SHA256 as Standard Webhooks defines it for every post, and the reference
implementation ``standardwebhooks`` for the first ``REFERENCE_CHECKS`` of each run), so a run
with bad signatures shows them instead of a rate.

The receiver stands for the customers' endpoints, which in production run on other machines;
here it shares the relay's two cores, so it should cost them as little as it can. An asyncio
protocol with httptools' parser (the C parser uvicorn uses) costs less than half of what
aiohttp's low-level server did per request, signature checks included (5-6 % of a core at 600
webhooks/s, about 90 us each, against 12 % at 550/s, about 220 us), which had left the
benchmark measuring the receiver nearly as much as the relay.

Control is a line protocol on stdin/stdout, one JSON object per reply:
  ``ready``            printed once listening: ``{"ready": port}``
  ``reset <key>``      zero the counters; verify signatures with this SigningKey from now on
  ``stats``            the counters, this process' CPU seconds and the monotonic clock
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any, cast

import httptools

from bench.loadgen import loop_factory

REFERENCE_CHECKS = 200


@dataclass
class Tally:
    posts: int = 0
    distinct: int = 0
    duplicates: int = 0
    bad_signatures: int = 0
    types: dict[str, int] = field(default_factory=dict)
    first: float = 0.0
    last: float = 0.0
    ids: set[str] = field(default_factory=set, repr=False)

    def public(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ids"}


class Counter:
    def __init__(self) -> None:
        self.tally = Tally()
        self.key = b""
        self.reference: Any = None

    def reset(self, key: str) -> None:
        from standardwebhooks.webhooks import Webhook

        self.tally = Tally()
        self.key = key.encode()
        self.reference = Webhook(self.key) if key else None

    def signed(self, headers: Any, body: bytes) -> bool:
        if not self.key:
            return True
        if self.reference is not None and self.tally.posts <= REFERENCE_CHECKS:
            self.reference.verify(body, dict(headers), json_parse=False)
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        mac = hmac.new(self.key, signed, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(mac).decode()
        return any(
            hmac.compare_digest(expected, sig) for sig in headers["webhook-signature"].split()
        )

    def handle(self, headers: dict[str, str], body: bytes) -> None:
        tally = self.tally
        now = time.monotonic()
        if not tally.posts:
            tally.first = now
        tally.last = now
        tally.posts += 1
        webhook_id = headers.get("webhook-id", "")
        if webhook_id in tally.ids:
            tally.duplicates += 1
        else:
            tally.ids.add(webhook_id)
            tally.distinct += 1
        try:
            if not self.signed(headers, body):
                raise ValueError("bad signature")
            kind = str(json.loads(body).get("type"))
        except Exception:
            tally.bad_signatures += 1
        else:
            tally.types[kind] = tally.types.get(kind, 0) + 1


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


class Connection(asyncio.Protocol):
    """One client connection: requests parsed as they arrive (keep-alive), each answered 204."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            self.transport.close()

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self.headers = {}
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.counter.handle(self.headers, b"".join(self.body))
        assert self.transport is not None
        self.transport.write(NO_CONTENT)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def listen(counter: Counter) -> tuple[asyncio.Server, int]:
    """The receiver listening on a free loopback port: (server, port)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(counter), "127.0.0.1", 0, backlog=1024)
    return server, server.sockets[0].getsockname()[1]


async def serve() -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    server, port = await listen(counter)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    reply({"ready": port})
    while line := await reader.readline():
        command, _, arg = line.decode().strip().partition(" ")
        if command == "reset":
            counter.reset(arg)
            reply({"ok": True})
        elif command == "stats":
            reply({**counter.tally.public(), "cpu": time.process_time(), "now": time.monotonic()})
        else:
            reply({"error": f"unknown command {command!r}"})
    server.close()


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()

"""The load generator: raw asyncio SMTP sessions, cheap enough not to be the bottleneck.

Run as ``python -m bench.loadgen`` (the benchmark starts one or more). It reads one JSON line
of configuration on stdin (credentials travel there, never on a command line), opens every
session (connect, EHLO, AUTH PLAIN once), prints ``{"ready": ...}``, waits for a ``go`` line,
then sends MAIL, RCPT (one or more), DATA and a fixed-size message in a loop for ``duration``
seconds on each session, one command per round trip (no PIPELINING: the usual application
client), finishes the transaction in flight at the deadline, sends QUIT and prints the result.

Only a 250 after the message data counts as accepted. Every other reply is tallied by stage
and code, so a benchmark of a misconfigured target shows its failures instead of a rate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

BENCH_ID_HEADER = b"X-Bench-Id: "
SENDER_LOCAL = "bench"
RCPT_DOMAIN = "example.net"  # RFC 2606 reserved; every target relays it to the sink anyway


def loop_factory() -> Any:
    """uvloop when installed (a dependency of the relay on Linux)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return None
    return uvloop.new_event_loop


@dataclass
class Config:
    host: str
    port: int
    sessions: int
    duration: float
    prefix: str  # unique per run: the sink counts only this run's messages
    sender_domain: str
    recipients: int = 1
    size: int = 2048
    first_session: int = 0  # sessions of several processes get distinct numbers
    username: str = ""  # empty: no AUTH (Postfix trusts mynetworks instead)
    password: str = ""
    ehlo: str = "loadgen.bench.test"
    html: bool = False  # a text/html body with a link per line (tracking benchmarks)
    track: bool = False  # report the X-Bench-Id of every acknowledged message (bench/faults.py)


@dataclass
class Result:
    accepted: int = 0  # messages answered 250 after the data
    accepted_rcpts: int = 0  # recipients of those messages that were answered 250 at RCPT
    failures: Counter[str] = field(default_factory=Counter)  # "RCPT 452", "DATA 451", ...
    reconnects: int = 0
    start: float = 0.0  # monotonic; CLOCK_MONOTONIC is shared by every process on Linux
    end: float = 0.0
    cpu: float = 0.0  # CPU seconds of this process between start and end
    acked: list[str] | None = None  # with Config.track: the X-Bench-Id of each accepted one

    def public(self) -> dict[str, Any]:
        extra = {} if self.acked is None else {"acked": self.acked}
        return {
            **extra,
            "accepted": self.accepted,
            "accepted_rcpts": self.accepted_rcpts,
            "failures": dict(self.failures),
            "reconnects": self.reconnects,
            "start": self.start,
            "end": self.end,
            "cpu": self.cpu,
        }


class ProtocolError(Exception):
    """The server said something that ends the session (closed, 421, unexpected greeting)."""


SEQ_WIDTH = 10


def build_message(cfg: Config, session: int) -> tuple[bytes, bytes, bytes]:
    """Three parts (a, b, c): message number n is a + seq + b + seq + c, exactly cfg.size bytes.

    The fixed-width sequence number is the only part that changes between messages (in the
    X-Bench-Id header and the Message-ID), so building a message costs two concatenations.
    """
    sender = f"{SENDER_LOCAL}@{cfg.sender_domain}"
    bench_id = f"{cfg.prefix}.{session:05d}."
    a = (
        f"From: Bench <{sender}>\r\n"
        f"To: <rcpt0@{RCPT_DOMAIN}>\r\n"
        "Subject: relay throughput benchmark\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: text/{'html' if cfg.html else 'plain'}; charset=us-ascii\r\n"
        f"{BENCH_ID_HEADER.decode()}{bench_id}"
    ).encode()
    b = f"\r\nMessage-ID: <{bench_id}".encode()
    c_head = f"@{cfg.sender_domain}>\r\n\r\n".encode()
    # Body lines never start with "." so no dot-stuffing is needed (RFC 5321 4.5.2).
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    if cfg.html:
        line = b'<p><a href="https://shop.example.com/product?id=42">A product</a>, again.</p>\r\n'
    body_len = max(cfg.size - len(a) - len(b) - len(c_head) - 2 * SEQ_WIDTH, len(line))
    body = (line * (body_len // len(line) + 1))[: body_len - 2] + b"\r\n"
    if cfg.html:
        body = line * max(1, body_len // len(line))  # whole lines: markup never cut in a tag
    return a, b, c_head + body


class Session:
    def __init__(self, cfg: Config, number: int, result: Result) -> None:
        self.cfg = cfg
        self.number = number
        self.result = result
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.parts = build_message(cfg, number)
        self.mail = f"MAIL FROM:<{SENDER_LOCAL}@{cfg.sender_domain}>\r\n".encode()
        self.rcpts = [
            f"RCPT TO:<rcpt{i}@{RCPT_DOMAIN}>\r\n".encode() for i in range(cfg.recipients)
        ]
        self.seq = 0
        self.bench_id = f"{cfg.prefix}.{number:05d}."

    async def reply(self) -> tuple[int, bytes]:
        """Read one reply, multi-line or not (RFC 5321 4.2.1)."""
        assert self.reader is not None
        line = await self.reader.readline()
        while line[3:4] == b"-":
            line = await self.reader.readline()
        if len(line) < 4:
            raise ProtocolError("connection closed")
        code = int(line[:3])
        if code == 421:
            raise ProtocolError("421 from server")
        return code, line

    async def command(self, data: bytes) -> int:
        assert self.writer is not None
        self.writer.write(data)
        code, _ = await self.reply()
        return code

    async def open(self) -> None:
        cfg = self.cfg
        self.reader, self.writer = await asyncio.open_connection(cfg.host, cfg.port, limit=65536)
        code, _ = await self.reply()
        if code != 220:
            raise ProtocolError(f"greeting {code}")
        if (code := await self.command(f"EHLO {cfg.ehlo}\r\n".encode())) != 250:
            raise ProtocolError(f"EHLO {code}")
        if cfg.username:
            token = base64.b64encode(f"\0{cfg.username}\0{cfg.password}".encode()).decode()
            if (code := await self.command(f"AUTH PLAIN {token}\r\n".encode())) != 235:
                raise ProtocolError(f"AUTH {code}")

    async def transaction(self) -> None:
        result = self.result
        code = await self.command(self.mail)
        if code != 250:
            result.failures[f"MAIL {code}"] += 1
            await self.command(b"RSET\r\n")
            return
        ok = 0
        for rcpt in self.rcpts:
            code = await self.command(rcpt)
            if code == 250:
                ok += 1
            else:
                result.failures[f"RCPT {code}"] += 1
        if not ok:
            await self.command(b"RSET\r\n")
            return
        code = await self.command(b"DATA\r\n")
        if code != 354:
            result.failures[f"DATA {code}"] += 1
            await self.command(b"RSET\r\n")
            return
        self.seq += 1
        a, b, c = self.parts
        seq = b"%0*d" % (SEQ_WIDTH, self.seq)
        code = await self.command(a + seq + b + seq + c + b".\r\n")
        if code == 250:
            result.accepted += 1
            result.accepted_rcpts += ok
            if result.acked is not None:
                result.acked.append(self.bench_id + seq.decode())
        else:
            result.failures[f"END {code}"] += 1

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if self.writer is None:
                    self.result.reconnects += 1
                    await self.open()
                await self.transaction()
            except (OSError, ProtocolError, ValueError) as exc:
                self.result.failures[f"session {type(exc).__name__}: {exc}"] += 1
                self.close()
                await asyncio.sleep(0.05)
        if self.writer is not None:
            try:
                await asyncio.wait_for(self.command(b"QUIT\r\n"), 5)
            except (OSError, ProtocolError, ValueError, TimeoutError):
                pass
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def open_sessions(cfg: Config, result: Result) -> tuple[list[Session], list[str]]:
    """Connect, EHLO and AUTH every session; the errors of those that failed (then none stay)."""
    sessions = [Session(cfg, cfg.first_session + i, result) for i in range(cfg.sessions)]
    opened = await asyncio.gather(*(s.open() for s in sessions), return_exceptions=True)
    errors = [f"{type(e).__name__}: {e}" for e in opened if isinstance(e, BaseException)]
    if errors:
        for s in sessions:
            s.close()
    return sessions, errors


async def run_sessions(sessions: list[Session], cfg: Config, result: Result) -> None:
    cpu0 = time.process_time()
    result.start = time.monotonic()
    await asyncio.gather(*(s.run(result.start + cfg.duration) for s in sessions))
    result.end = time.monotonic()
    result.cpu = time.process_time() - cpu0


async def main_async() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    cfg = Config(**json.loads(await stdin.readline()))
    result = Result(acked=[] if cfg.track else None)
    sessions, errors = await open_sessions(cfg, result)
    emit({"ready": len(sessions) - len(errors), "errors": errors[:5]})
    if errors or (await stdin.readline()).strip() != b"go":
        return
    await run_sessions(sessions, cfg, result)
    emit(result.public())


def main() -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main_async())


if __name__ == "__main__":
    main()

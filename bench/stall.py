"""How long one hostile message holds a relay process.

One message with N folded header lines (a header continued over N lines; the relay once
parsed them quadratically, on the event loop) is sent on one SMTP connection while a second
connection of the same process sends NOOPs and the admin app's /healthz is polled. Reported:
the message's round trip (end of DATA to reply), and the longest NOOP and /healthz waits
meanwhile: a process that stays responsive answers those in milliseconds.

    .venv/bin/python -m bench.stall [--lines 600000] [--tree PATH]

The relay runs as `relay serve` on the embedded default with one SMTP process (the main one,
which also serves the admin app) and no delivery. ``--tree`` runs the relay from another
checkout (e.g. an older version, for comparison); the probe is this one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.children import tail
from bench.relay_target import RelayInstance, free_port


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> str:
    writer.write(line + b"\r\n")
    await writer.drain()
    return await reply(reader)


async def reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = (await reader.readline()).decode()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != "-":
            return line.strip()


async def session(
    port: int, username: str, password: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reply(reader)
    await command(reader, writer, b"EHLO bench")
    token = base64.b64encode(f"\0{username}\0{password}".encode())
    answer = await command(reader, writer, b"AUTH PLAIN " + token)
    if not answer.startswith("235"):
        raise RuntimeError(f"AUTH: {answer}")
    return reader, writer


async def run(lines: int, tree: Path | None) -> dict[str, float | str]:
    root = Path(tempfile.mkdtemp(prefix="relay-stall-"))
    relay = RelayInstance(
        root,
        free_port(),
        extra_env={"RELAY_SMTP_PROCESSES": "1", "RELAY_DELIVERY_ENABLED": "false"},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(relay.env())
    with (root / "relay.log").open("ab") as log:
        relay.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "serve",
            cwd=tree or Path(__file__).resolve().parent.parent,
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        await relay._wait_ready(60)
        username, password = await relay._setup()
        big_r, big_w = await session(relay.smtp_port, username, password)
        probe_r, probe_w = await session(relay.smtp_port, username, password)
        message = (
            b"From: bench@bench.example.com\r\nTo: r@example.net\r\nSubject: stall\r\n"
            + b"X-Folded: start\r\n"
            + b" more\r\n" * lines
            + b"\r\nbody\r\n.\r\n"
        )
        await command(big_r, big_w, b"MAIL FROM:<bench@bench.example.com>")
        await command(big_r, big_w, b"RCPT TO:<r@example.net>")
        await command(big_r, big_w, b"DATA")
        big_w.write(message)
        await big_w.drain()
        sent = time.perf_counter()
        answer = asyncio.ensure_future(reply(big_r))
        noop_max = health_max = 0.0
        url = f"http://127.0.0.1:{relay.admin_port}/healthz"
        async with aiohttp.ClientSession() as http:

            async def health() -> float:
                started = time.perf_counter()
                async with http.get(url) as resp:
                    await resp.read()
                return time.perf_counter() - started

            async def noop() -> float:
                started = time.perf_counter()
                await command(probe_r, probe_w, b"NOOP")
                return time.perf_counter() - started

            while not answer.done():
                noop_waited, health_waited = await asyncio.gather(noop(), health())
                noop_max = max(noop_max, noop_waited)
                health_max = max(health_max, health_waited)
        done = time.perf_counter() - sent
        return {
            "lines": lines,
            "reply": (await answer)[:40],
            "message_seconds": round(done, 3),
            "longest_noop_seconds": round(noop_max, 3),
            "longest_healthz_seconds": round(health_max, 3),
        }
    except Exception:
        print(tail(root / "relay.log"), file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(Exception):
            await relay.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=600_000)
    parser.add_argument("--tree", type=Path, default=None, help="run the relay from this checkout")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.lines, args.tree))))


if __name__ == "__main__":
    main()

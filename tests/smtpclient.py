"""A raw SMTP client for protocol tests: sends exactly the bytes given, reads whole replies."""

from __future__ import annotations

import asyncio
import base64
import ssl


class RawSMTP:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(
        cls, port: int, *, tls: bool = False, source: str | None = None
    ) -> tuple[RawSMTP, str]:
        """``source``: the client's address (any of 127.0.0.0/8 reaches a loopback listener)."""
        ctx = None
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, local_addr=(source, 0) if source else None
        )
        client = cls(reader, writer)
        return client, await client.reply()

    async def reply(self) -> str:
        """One whole (possibly multi-line) reply, lines joined with newlines."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 15)
            if not line:
                raise ConnectionError("closed: " + "\n".join(lines))
            text = line.decode().rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> str:
        if isinstance(line, str):
            line = line.encode()
        await self.send(line + b"\r\n")
        return await self.reply()

    async def starttls(self) -> str:
        reply = await self.cmd("STARTTLS")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await self.writer.start_tls(ctx)
        return reply

    async def login(self, username: str, password: str) -> str:
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        return await self.cmd(f"AUTH PLAIN {token}")

    async def closed(self) -> bool:
        """True once the server has closed the connection."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), 5)
        except (ConnectionError, TimeoutError):
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass

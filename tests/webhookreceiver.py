"""A real HTTP receiver for webhook tests: aiohttp on a free loopback port, in the test's loop.

It records every request (path, headers, raw body) and answers per path:

    rx.answer("/hooks/a", 503, 503, 200)   # statuses in turn, the last one repeated
    rx.hold("/hooks/slow")                 # requests wait until rx.release("/hooks/slow")
    rx.url("/hooks/a")                     # http://127.0.0.1:<port>/hooks/a

and counts, per path, the most requests it ever had open at once and, per ``webhook-id``, the
most concurrent requests with that id (two workers must never post one delivery at once).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class Receiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[Request] = []
        self._answers: dict[str, list[int]] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self.open: Counter[str] = Counter()
        self.max_open: Counter[str] = Counter()
        self._open_ids: Counter[str] = Counter()
        self.max_open_per_id: Counter[str] = Counter()
        self.arrived: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._runner: web.AppRunner | None = None

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def answer(self, path: str, *statuses: int) -> None:
        self._answers[path] = list(statuses)

    def hold(self, path: str) -> None:
        self._gates[path] = asyncio.Event()

    def release(self, path: str) -> None:
        gate = self._gates.pop(path, None)
        if gate is not None:
            gate.set()

    def at(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        body = await request.read()
        record = Request(path, {k.lower(): v for k, v in request.headers.items()}, body)
        self.requests.append(record)
        self.arrived[path].set()
        self.open[path] += 1
        self.max_open[path] = max(self.max_open[path], self.open[path])
        wid = record.webhook_id
        self._open_ids[wid] += 1
        self.max_open_per_id[wid] = max(self.max_open_per_id[wid], self._open_ids[wid])
        try:
            gate = self._gates.get(path)
            if gate is not None:
                await gate.wait()
            statuses = self._answers.get(path, [200])
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            return web.Response(status=status, text=f"answer {status}")
        finally:
            self.open[path] -= 1
            self._open_ids[wid] -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        for gate in self._gates.values():
            gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

"""The public tracking listener (``tracking.listen``): click redirects, the open pixel and the
unsubscribe endpoint, and nothing else. It faces the internet, so it is its own aiohttp app,
apart from the admin app; it answers by path, whatever the Host header says.

- ``GET|HEAD /c/<token>``: ``302`` to the link's original URL; records ``clicked``.
- ``GET|HEAD /o/<token>``: the 1x1 GIF, never cached; records ``opened``.
- ``GET|HEAD /u/<token>``: a confirmation page whose button POSTs to the same URL; records
  nothing (link scanners fetch it).
- ``POST /u/<token>`` with ``List-Unsubscribe=One-Click`` (RFC 8058 3.2, form-urlencoded or
  multipart): records ``unsubscribed``, which suppresses the address for the account, and
  answers ``200`` with a page, never a redirect (RFC 8058 3.1).

A token that does not decrypt for its kind (tampered, truncated, made with another key, an
open token on /c/...) is ``404``: no redirect to anything we did not put in a message.

Hits go to the FeedbackWriter's group commit: opens and clicks without waiting; an unsubscribe
waits for its commit, so its ``200`` means the suppression is stored (``503`` otherwise: the
mailbox provider or the person tries again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

import structlog
from aiohttp import web

from relay import events, metrics
from relay.config import Settings, parse_hostport
from relay.queue.feedback import Feedback
from relay.services import Services
from relay.tracking import pages
from relay.tracking.keys import load_codec
from relay.tracking.machine import MachineRule, client_ip, networks
from relay.tracking.tokens import CLICK, OPEN, UNSUBSCRIBE, Token, TokenCodec

log = structlog.get_logger("relay.tracking")

# RFC 8058 3.1: the POST body's one key and value.
ONE_CLICK_KEY, ONE_CLICK_VALUE = "List-Unsubscribe", "One-Click"
# Enough for the RFC 8058 body in either encoding and the page's form; nothing else is read.
MAX_BODY = 16 * 1024


class FeedbackSink(Protocol):
    """What the listener records through (relay.queue.feedback.FeedbackWriter)."""

    async def record(self, items: Sequence[Feedback]) -> list[bool]: ...

    def enqueue(self, items: Sequence[Feedback]) -> None: ...


class TrackingServer:
    def __init__(
        self, settings: Settings, codec: TokenCodec, sink: FeedbackSink, host: str, port: int
    ) -> None:
        self.codec = codec
        self.sink = sink
        self.host, self.port = host, port
        self.machines = MachineRule(settings.tracking)
        self.trusted = networks(settings.tracking.trusted_proxies)
        self.app = self._app()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._counters = {
            (kind, result): metrics.TRACKING_REQUESTS.labels(kind, result)
            for kind in ("click", "open", "unsubscribe", "page")
            for result in ("recorded", "machine", "invalid", "error")
        }

    @classmethod
    async def create(cls, services: Services, sink: FeedbackSink) -> TrackingServer:
        host, port = parse_hostport(services.settings.tracking.listen)
        return cls(services.settings, await load_codec(services), sink, host, port)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/c/{token}", self.click)
        app.router.add_get("/o/{token}", self.open)
        app.router.add_get("/u/{token}", self.unsubscribe_page)
        app.router.add_post("/u/{token}", self.unsubscribe)
        return app

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish within ``timeout``."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner.cleanup(), timeout + 1)

    # -- handlers ----------------------------------------------------------------------------

    async def click(self, request: web.Request) -> web.StreamResponse:
        token = self.codec.read(CLICK, request.match_info["token"])
        if token is None:
            return self._not_found("click")
        data = {"URL": token.url, "LinkIndex": token.link_index}
        self._hit("click", events.CLICKED, token, request, data)
        headers = dict(pages.NO_STORE)
        headers["Location"] = token.url
        return web.Response(status=302, headers=headers)

    async def open(self, request: web.Request) -> web.StreamResponse:
        token = self.codec.read(OPEN, request.match_info["token"])
        if token is None:
            return self._not_found("open")
        self._hit("open", events.OPENED, token, request, {})
        return web.Response(body=pages.PIXEL, content_type="image/gif", headers=pages.NO_STORE)

    async def unsubscribe_page(self, request: web.Request) -> web.StreamResponse:
        token = self.codec.read(UNSUBSCRIBE, request.match_info["token"])
        if token is None:
            return self._not_found("page")
        self._counters["page", "recorded"].inc()
        return _page(pages.confirm_page(token.recipient))

    async def unsubscribe(self, request: web.Request) -> web.StreamResponse:
        token = self.codec.read(UNSUBSCRIBE, request.match_info["token"])
        if token is None:
            return self._not_found("unsubscribe")
        try:
            form = await request.post()
        except (ValueError, web.HTTPException):
            form = None  # over MAX_BODY, or not a form at all
        if form is None or form.get(ONE_CLICK_KEY) != ONE_CLICK_VALUE:
            self._counters["unsubscribe", "invalid"].inc()
            return _page(pages.bad_request_page(), status=400)
        source = "page" if form.get("source") == "page" else "one-click"
        item = Feedback(
            message_id=token.message_id,
            recipient=token.recipient,
            event=events.UNSUBSCRIBED,
            data={**self._client(request), "source": source},
            suppress="unsubscribe",
            suppress_reason=f"unsubscribed ({source})",
            # One unsubscribe per recipient of a message, however often it is posted.
            dedupe_key=f"unsubscribed:{token.message_id}:{token.recipient.lower()}",
            created_at=time.time(),
        )
        try:
            await self.sink.record([item])
        except Exception as exc:
            log.warning("unsubscribe not recorded", error=type(exc).__name__)
            self._counters["unsubscribe", "error"].inc()
            return _page(pages.unavailable_page(), status=503, retry_after=True)
        self._counters["unsubscribe", "recorded"].inc()
        return _page(pages.done_page(token.recipient))

    # -- helpers -----------------------------------------------------------------------------

    def _client(self, request: web.Request) -> dict[str, Any]:
        peer = request.remote or ""
        forwarded = request.headers.getall("X-Forwarded-For", []) if self.trusted else []
        return {
            "UserAgent": request.headers.get("User-Agent", ""),
            "IpAddress": client_ip(peer, forwarded, self.trusted),
        }

    def _hit(
        self, kind: str, event: str, token: Token, request: web.Request, data: dict[str, Any]
    ) -> None:
        now = time.time()
        client = self._client(request)
        reason = self.machines.reason(request.method, client["UserAgent"], token.minted_at, now)
        data.update(client)
        data["machine"] = reason is not None
        if reason is not None:
            data["machine_reason"] = reason
        item = Feedback(token.message_id, token.recipient, event, data=data, created_at=now)
        try:
            self.sink.enqueue([item])
        except Exception as exc:  # the answer does not depend on it; the count shows it
            log.warning("tracking hit not queued", kind=kind, error=type(exc).__name__)
            self._counters[kind, "error"].inc()
            return
        self._counters[kind, "machine" if reason else "recorded"].inc()

    def _not_found(self, kind: str) -> web.Response:
        self._counters[kind, "invalid"].inc()
        return web.Response(status=404, text="Not Found", headers=pages.NO_STORE)


def _page(text: str, *, status: int = 200, retry_after: bool = False) -> web.Response:
    headers = dict(pages.PAGE_HEADERS)
    if retry_after:
        headers["Retry-After"] = "60"
    return web.Response(
        status=status, text=text, content_type="text/html", charset="utf-8", headers=headers
    )

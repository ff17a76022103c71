"""The tracking listener over real HTTP, recording through the real FeedbackWriter into SQLite
and PostgreSQL; and, in a whole relay, an unsubscribe that makes the next RCPT fail."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from sqlalchemy import select

from relay.config import Settings
from relay.queue.feedback import FeedbackWriter
from relay.queue.ingest import QueueWriter
from relay.queue.model import NewMessage
from relay.services import Services
from relay.smtp import replies
from relay.store import schema as t
from relay.tracking import pages
from relay.tracking.keys import load_codec
from relay.tracking.listener import TrackingServer
from relay.tracking.tokens import CLICK, OPEN, UNSUBSCRIBE, TokenCodec
from tests.relayfix import start_relay, stop_relay
from tests.smtpclient import RawSMTP

USER_ID, DOMAIN_ID = 7, 3
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
URL = "https://shop.example.com/p/1?utm=x&not=2"
T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """``probe()``'s first truthy result (hits are committed after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


@dataclass
class Tracking:
    services: Services
    server: TrackingServer
    writer: FeedbackWriter
    codec: TokenCodec
    http: aiohttp.ClientSession
    message_id: str
    rcpt: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def token(self, kind: bytes, *, age: float = 3600, rcpt: str | None = None) -> str:
        prefix = self.codec.prefix(self.message_id, rcpt or self.rcpt, int(time.time() - age))
        assert prefix is not None
        return (
            self.codec.make(kind, prefix, 2, URL)
            if kind == CLICK
            else self.codec.make(kind, prefix)
        )

    async def get(self, path: str, method: str = "GET", **kw: Any) -> tuple[int, Any, bytes]:
        kw.setdefault("headers", {"User-Agent": BROWSER})
        async with self.http.request(method, self.base + path, allow_redirects=False, **kw) as r:
            return r.status, r.headers, await r.read()

    async def events(self, *names: str) -> list[Any]:
        e = t.events
        async with self.services.db.read() as conn:
            rows = await conn.execute(
                select(e.c.event, e.c.recipient, e.c.user_id, e.c.domain_id, e.c.data)
                .where(e.c.message_id == self.message_id, e.c.event.in_(names))
                .order_by(e.c.id)
            )
            return list(rows.all())


async def queue_message(services: Services, rcpts: list[str]) -> str:
    mid = str(uuid.uuid4())
    writer = QueueWriter(services.db, on_commit=services.notify_enqueued)
    await writer.start()
    try:
        await writer.submit(
            NewMessage(
                id=mid,
                user_id=USER_ID,
                domain_id=DOMAIN_ID,
                source="smtp",
                mail_from="app@example.com",
                recipients=rcpts,
                body=b"Subject: x\r\n\r\nhi\r\n",
            )
        )
    finally:
        await writer.stop()
    return mid


async def serve(services: Services) -> AsyncIterator[Tracking]:
    writer = FeedbackWriter(services.db, services.bus)
    writer.start()
    codec = await load_codec(services)
    server = TrackingServer(services.settings, codec, writer, "127.0.0.1", 0)
    await server.start()
    mid = await queue_message(services, ["Reader@Example.net", "other@example.net"])
    async with aiohttp.ClientSession() as http:
        yield Tracking(services, server, writer, codec, http, mid, "Reader@Example.net")
    await server.stop(5)
    await writer.stop()


@pytest.fixture
async def tracking(services: Services) -> AsyncIterator[Tracking]:
    async for tr in serve(services):
        yield tr


async def test_click_redirects_to_the_original_url_and_records(tracking: Tracking) -> None:
    status, headers, _ = await tracking.get(f"/c/{tracking.token(CLICK)}")
    assert status == 302 and headers["Location"] == URL
    assert "no-store" in headers["Cache-Control"] and headers["Referrer-Policy"] == "no-referrer"
    (row,) = await eventually(lambda: tracking.events("clicked"))
    assert (row.recipient, row.user_id, row.domain_id) == ("Reader@Example.net", USER_ID, DOMAIN_ID)
    assert row.data == {
        "URL": URL,
        "LinkIndex": 2,
        "UserAgent": BROWSER,
        "IpAddress": "127.0.0.1",
        "machine": False,
    }


async def test_open_answers_the_pixel_uncached_and_records(tracking: Tracking) -> None:
    for _ in range(2):
        status, headers, body = await tracking.get(f"/o/{tracking.token(OPEN)}")
        assert status == 200 and headers["Content-Type"] == "image/gif"
        assert body == pages.PIXEL and body.startswith(b"GIF89a") and len(body) == 43
        assert headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0"
        assert headers["Pragma"] == "no-cache" and "Last-Modified" not in headers
    rows = await eventually(lambda: _at_least(tracking.events("opened"), 2))
    assert [r.data["machine"] for r in rows] == [False, False]
    assert rows[0].data["UserAgent"] == BROWSER


async def _at_least(rows: Awaitable[list[Any]], n: int) -> list[Any]:
    found = await rows
    return found if len(found) >= n else []


async def test_tampered_and_foreign_tokens_are_404_never_a_redirect(tracking: Tracking) -> None:
    click = tracking.token(CLICK)
    flipped = click[:10] + ("A" if click[10] != "A" else "B") + click[11:]
    other_key = TokenCodec(os.urandom(32))
    prefix = other_key.prefix(tracking.message_id, tracking.rcpt, 1)
    assert prefix is not None
    paths = [
        f"/c/{flipped}",
        f"/c/{click[:-3]}",
        f"/c/{tracking.token(OPEN)}",  # an open token is not a click token
        f"/o/{tracking.token(UNSUBSCRIBE)}",
        f"/u/{tracking.token(OPEN)}",
        f"/c/{other_key.make(CLICK, prefix, 0, 'https://evil.example/')}",
        "/c/" + base64.urlsafe_b64encode(b"\x01https://evil.example/").decode().rstrip("="),
        "/c/x",
        "/c/",
        "/",
        "/api.php",
        "/c/" + "A" * 5000,
    ]
    for path in paths:
        status, headers, _ = await tracking.get(path)
        assert status == 404, path
        assert "Location" not in headers, path
    status, _, _ = await tracking.get(f"/u/{flipped}", "POST", data=b"List-Unsubscribe=One-Click")
    assert status == 404
    # Nothing was recorded: the next real hit is the first event.
    await tracking.get(f"/o/{tracking.token(OPEN)}")
    rows = await eventually(lambda: tracking.events("opened", "clicked", "unsubscribed"))
    assert [r.event for r in rows] == ["opened"]


async def test_machines_are_recorded_but_flagged(tracking: Tracking) -> None:
    token = tracking.token(CLICK)
    status, headers, body = await tracking.get(f"/c/{token}", "HEAD")
    assert status == 302 and headers["Location"] == URL and body == b""
    await tracking.get(f"/c/{token}", headers={"User-Agent": "Mozilla/5.0 (compatible; Barracuda)"})
    await tracking.get(f"/c/{token}", skip_auto_headers=["User-Agent"], headers={})
    await tracking.get(f"/o/{tracking.token(OPEN, age=0)}")  # just accepted: a prefetch
    await tracking.get(f"/o/{tracking.token(OPEN, age=600)}")  # a person, ten minutes later
    rows = await eventually(lambda: _at_least(tracking.events("clicked", "opened"), 5))
    reasons = [(r.event, r.data["machine"], r.data.get("machine_reason")) for r in rows]
    assert reasons == [
        ("clicked", True, "head"),
        ("clicked", True, "user-agent"),
        ("clicked", True, "no-user-agent"),
        ("opened", True, "early"),
        ("opened", False, None),
    ]


async def test_unsubscribe_page_then_one_click_post(tracking: Tracking) -> None:
    token = tracking.token(UNSUBSCRIBE)
    status, headers, body = await tracking.get(f"/u/{token}")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert '<form method="post">' in page and 'value="One-Click"' in page
    assert "<script" not in page and "R***@Example.net" in page
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert await tracking.events("unsubscribed") == []  # looking is not unsubscribing
    assert await tracking.services.directory.suppression(USER_ID, tracking.rcpt) is None

    # RFC 8058 3.2: what a mailbox provider sends: no cookies, the one key/value pair.
    status, headers, body = await tracking.get(
        f"/u/{token}",
        "POST",
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and "Location" not in headers
    assert b"will not receive email" in body
    # Committed before the answer: no waiting needed.
    rows = await tracking.events("unsubscribed", "suppressed")
    assert [(r.event, r.recipient) for r in rows] == [
        ("unsubscribed", "Reader@Example.net"),
        ("suppressed", "Reader@Example.net"),
    ]
    assert rows[0].data["source"] == "one-click" and rows[0].data["IpAddress"] == "127.0.0.1"
    s = t.suppressions
    async with tracking.services.db.read() as conn:
        entry = (await conn.execute(select(s).where(s.c.user_id == USER_ID))).one()
    assert (entry.email, entry.source) == ("reader@example.net", "unsubscribe")
    reason = await eventually(
        lambda: tracking.services.directory.suppression(USER_ID, "READER@example.net")
    )
    assert reason == "account suppression list"
    # Posting again (multipart this time, as RFC 8058 prefers) still answers 200; recorded once.
    form = aiohttp.FormData()
    form.add_field("List-Unsubscribe", "One-Click")
    form.add_field("extra", "x", filename="x.txt")  # forces multipart/form-data
    status, _, _ = await tracking.get(f"/u/{token}", "POST", data=form)
    assert status == 200
    assert len(await tracking.events("unsubscribed")) == 1
    # The other recipient of the message is not affected.
    assert await tracking.services.directory.suppression(USER_ID, "other@example.net") is None


async def test_the_pages_form_unsubscribes_and_other_posts_do_not(tracking: Tracking) -> None:
    token = tracking.token(UNSUBSCRIBE, rcpt="other@example.net")
    for bad in (b"", b"List-Unsubscribe=Yes", b"unsubscribe=1"):
        status, _, body = await tracking.get(
            f"/u/{token}",
            "POST",
            data=bad,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 400 and b"Nothing was changed" in body
    status, _, _ = await tracking.get(
        f"/u/{token}", "POST", data=b"x" * 20000, headers={"Content-Type": "text/plain"}
    )
    assert status == 400
    assert await tracking.events("unsubscribed") == []
    status, _, _ = await tracking.get(
        f"/u/{token}", "POST", data={"List-Unsubscribe": "One-Click", "source": "page"}
    )
    assert status == 200
    (row,) = await tracking.events("unsubscribed")
    assert row.recipient == "other@example.net" and row.data["source"] == "page"


async def test_unsubscribe_that_cannot_be_stored_says_so(tracking: Tracking) -> None:
    await tracking.writer.stop()
    status, headers, body = await tracking.get(
        f"/u/{tracking.token(UNSUBSCRIBE)}", "POST", data={"List-Unsubscribe": "One-Click"}
    )
    assert status == 503 and headers["Retry-After"] == "60" and b"try again" in body
    # Clicks still go where they lead.
    status, headers, _ = await tracking.get(f"/c/{tracking.token(CLICK)}")
    assert status == 302 and headers["Location"] == URL


async def test_client_address_behind_a_trusted_proxy(
    settings: Settings, services: Services
) -> None:
    settings.tracking.trusted_proxies = ["127.0.0.0/8"]
    async for tr in serve(services):
        xff = {"User-Agent": BROWSER, "X-Forwarded-For": "198.51.100.1, 203.0.113.9, 127.0.0.2"}
        await tr.get(f"/o/{tr.token(OPEN)}", headers=xff)
        (row,) = await eventually(lambda: tr.events("opened"))  # noqa: B023
        assert row.data["IpAddress"] == "203.0.113.9"


async def test_every_node_reads_the_same_secret(settings: Settings, services: Services) -> None:
    first, second = await load_codec(services), await load_codec(services)
    prefix = first.prefix("m", "r@example.net", 1)
    assert prefix is not None
    assert second.read(OPEN, first.make(OPEN, prefix)) is not None
    async with services.db.read() as conn:
        stored = await conn.scalar(select(t.cluster_secrets.c.value))
    assert stored is not None and len(base64.b64decode(services.box.open(stored))) == 32
    settings.tracking.secret = base64.b64encode(os.urandom(32)).decode()
    configured = await load_codec(services)
    assert configured.read(OPEN, first.make(OPEN, prefix)) is None


async def test_unsubscribe_in_a_running_relay_makes_the_next_rcpt_fail(
    tmp_path: Path, db_url: str
) -> None:
    running, session = await start_relay(tmp_path, db_url)
    try:
        acct = await running.new_account()
        c, _ = await RawSMTP.connect(running.smtp_port)
        await c.cmd("EHLO client.test")
        await c.login(acct.username, acct.password)
        await c.cmd("MAIL FROM:<app@example.com>")
        assert (await c.cmd("RCPT TO:<reader@example.net>")).startswith("250")
        await c.cmd("DATA")
        await c.send(b"From: app@example.com\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")
        queued = await c.reply()
        mid = queued.rsplit(" ", 1)[1]
        relay = running.relay
        assert relay.tracking is not None
        prefix = relay.tracking.codec.prefix(mid, "reader@example.net", int(time.time()))
        url = f"http://127.0.0.1:{relay.tracking.port}/u/"
        url += relay.tracking.codec.make(UNSUBSCRIBE, prefix)
        async with session.post(url, data={"List-Unsubscribe": "One-Click"}) as resp:
            assert resp.status == 200
        await c.cmd("RSET")
        await c.cmd("MAIL FROM:<app@example.com>")
        assert await c.cmd("RCPT TO:<reader@example.net>") == replies.RCPT_SUPPRESSED
        assert (await c.cmd("RCPT TO:<someone.else@example.net>")).startswith("250")
        await c.close()
    finally:
        await stop_relay(running, session)

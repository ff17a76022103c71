"""Tracking on a whole relay node, SQLite and PostgreSQL: SMTP and /api/v1/email submission ->
per-recipient rewriting and DKIM signing -> queue -> delivery to a real sink; then the links of
the delivered mail followed over real HTTP to the tracking listener, and what that records
(events, suppression, statistics, webhooks).

The delivered mail is what is checked: its links, pixel and List-Unsubscribe headers, its DKIM
signature (dkimpy against the DNS stub) and that each recipient's tokens name that recipient.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import aiohttp
import aiosmtplib
import dkim
import pytest
from sqlalchemy import select

from relay.store import schema as t
from relay.tracking.tokens import CLICK, OPEN, UNSUBSCRIBE, Token
from tests.provision import route_to, wait_until
from tests.relayfix import Account, RunningRelay, start_relay, stop_relay
from tests.sink import Received, Sink
from tests.test_dkim import stub_dnsfunc
from tests.test_e2e_process import Node as ProcessNode
from tests.test_limits_processes import spread
from tests.webhookreceiver import Receiver

TRACK_HOST = "track.example.com"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
LINKS = ["https://shop.example.com/p/1?utm=x&not=2", "http://shop.example.com/p/2"]
HTML = (
    "<html><body><p>This week:</p>\r\n"
    '<a href="https://shop.example.com/p/1?utm=x&amp;not=2">one</a>\r\n'
    '<a href="http://shop.example.com/p/2">two</a>\r\n'
    '<a href="mailto:help@example.com">help</a>\r\n'
    "</body></html>\r\n"
)
TEXT = "This week: https://shop.example.com/p/1\r\n"
CLICK_URL = re.compile(rf"https://{re.escape(TRACK_HOST)}/c/([A-Za-z0-9_-]+)")
OPEN_URL = re.compile(rf"https://{re.escape(TRACK_HOST)}/o/([A-Za-z0-9_-]+)")
UNSUB_URL = re.compile(rf"https://{re.escape(TRACK_HOST)}/u/([A-Za-z0-9_-]+)")


def newsletter(subject: str, to: str = "reader@example.net") -> bytes:
    return (
        f"From: App <app@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n"
        f"\r\n{TEXT}--b1\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 7bit\r\n\r\n{HTML}--b1--\r\n"
    ).encode()


@dataclass
class Delivered:
    """One delivered transaction, read back."""

    received: Received
    message: EmailMessage

    @property
    def html(self) -> str:
        part = self.message.get_body(("html",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]

    def clicks(self) -> list[str]:
        return CLICK_URL.findall(self.html)

    def opens(self) -> list[str]:
        return OPEN_URL.findall(self.html)

    def unsubscribe(self) -> str | None:
        found = UNSUB_URL.findall(self.message.get("List-Unsubscribe", ""))
        return found[0] if found else None

    def signed_headers(self) -> list[str]:
        tags = dict(
            item.strip().split("=", 1)
            for item in re.sub(r"\s+", "", self.message["DKIM-Signature"]).split(";")
            if "=" in item
        )
        return tags["h"].lower().split(":")


@dataclass
class Node:
    running: RunningRelay
    acct: Account
    sink: Sink
    nameserver: str
    http: aiohttp.ClientSession

    @property
    def tracking_base(self) -> str:
        tracking = self.running.relay.tracking
        assert tracking is not None
        return f"http://127.0.0.1:{tracking.port}"

    def read(self, kind: bytes, token: str) -> Token:
        tracking = self.running.relay.tracking
        assert tracking is not None
        found = tracking.codec.read(kind, token)
        assert found is not None, "a delivered token does not decrypt"
        return found

    async def options(self, links: int, opens: int, unsubscribe: int) -> None:
        res = await self.running.api.call(
            "emailgateway.updatedomain",
            APIKey=self.acct.api_key,
            DomainID=self.acct.domain_id,
            LinkTracking=links,
            OpenTracking=opens,
            UnsubscribeLink=unsubscribe,
        )
        assert res["Success"], res

    async def send_smtp(self, subject: str, rcpts: list[str]) -> str:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.running.smtp_port, start_tls=False)
        await client.connect()
        await client.login(self.acct.username, self.acct.password)
        errors, reply = await client.sendmail(
            "app@example.com", rcpts, newsletter(subject, ", ".join(rcpts))
        )
        await client.quit()
        assert errors == {} and reply.startswith("2.0.0 Ok: queued as "), (errors, reply)
        return reply.rsplit(" ", 1)[1]

    async def send_api(self, key: str, subject: str, **extra: Any) -> tuple[int, dict[str, Any]]:
        body = {
            "Subject": subject,
            "ContentType": "html",
            "HTMLContent": HTML,
            "PlainContent": TEXT,
            "From": {"name": "App", "email": "app@example.com"},
            "To": [{"name": "Reader", "email": "reader@example.net"}],
            **extra,
        }
        status, data = await self.running.api.request(
            "POST", "/api/v1/email", headers={"Authorization": f"Bearer {key}"}, json=body
        )
        assert isinstance(data, dict), data
        return status, data

    async def delivered(self, subject: str, count: int = 1) -> list[Delivered]:
        def mine() -> list[Received]:
            return [m for m in self.sink.messages if f"Subject: {subject}\r\n".encode() in m.data]

        await wait_until(lambda: len(mine()) >= count, what=f"{count} deliveries of {subject}")
        out = []
        for received in mine():
            parsed = email.message_from_bytes(received.data, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            out.append(Delivered(received, parsed))
        return out

    async def verifies(self, data: bytes) -> bool:
        return bool(
            await asyncio.to_thread(dkim.verify, data, dnsfunc=stub_dnsfunc(self.nameserver))
        )

    async def hit(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        kw.setdefault("headers", {"User-Agent": BROWSER})
        async with self.http.request(
            method, self.tracking_base + path, allow_redirects=False, **kw
        ) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    async def events(self, message_id: str, *names: str) -> list[Any]:
        services = self.running.relay.services
        assert services is not None
        e = t.events
        async with services.db.read() as conn:
            rows = await conn.execute(
                select(e.c.event, e.c.recipient, e.c.data)
                .where(e.c.message_id == message_id, e.c.event.in_(names))
                .order_by(e.c.id)
            )
            return list(rows.all())

    async def sender_key(self) -> str:
        res = await self.running.api.call(
            "emailgateway.addapi",
            APIKey=self.acct.api_key,
            DomainID=self.acct.domain_id,
            Description="send",
        )
        assert res["Success"], res
        return str(res["APIKey"]["APIKey"])


@pytest.fixture
async def node(tmp_path: Path, db_url: str, sink: Sink, dns_stub: Any) -> AsyncIterator[Node]:
    running, session = await start_relay(
        tmp_path,
        db_url,
        RELAY_DELIVERY_ENABLED="true",
        RELAY_DELIVERY_POLL_INTERVAL="0.2",
        # The operator's tracking host: the test domain's DNS records are not verified.
        RELAY_TRACKING_HOST=TRACK_HOST,
        # Hits come within a second of acceptance here; people's hits, not prefetches.
        RELAY_TRACKING_MACHINE_SECONDS="0",
        RELAY_WEBHOOKS_ALLOW_NETWORKS="127.0.0.0/8",
        RELAY_WEBHOOKS_POLL_INTERVAL="0.2",
    )
    try:
        acct = await running.new_account()
        await route_to(
            running.api, sink.port, name="downstream", DomainSettings_LinkTracking="t.x.com",
            DomainSettings_OpenTracking="o.x.com", DomainSettings_MFrom="b.x.com",
        )  # fmt: skip
        host, value = acct.dkim_record
        dns_stub.txt(host, value)
        yield Node(running, acct, sink, dns_stub.nameserver, session)
    finally:
        await stop_relay(running, session)


COMBOS = {"links": (1, 0, 0), "opens": (0, 1, 0), "unsubscribe": (0, 0, 1), "all": (1, 1, 1)}
COMBOS["none"] = (0, 0, 0)


async def test_each_domain_option_in_the_delivered_mail(node: Node) -> None:
    for name, (links, opens, unsubscribe) in COMBOS.items():
        await node.options(links, opens, unsubscribe)
        mid = await node.send_smtp(f"options-{name}", ["reader@example.net"])
        await _check_options(node, f"options-{name}", mid, links, opens, unsubscribe)


async def _check_options(
    node: Node, subject: str, mid: str, links: int, opens: int, unsubscribe: int
) -> None:
    (got,) = await node.delivered(subject)
    assert await node.verifies(got.received.data), subject
    html, text = got.html, got.text

    clicks = got.clicks()
    if links:
        assert len(clicks) == len(LINKS), subject
        assert [node.read(CLICK, c).url for c in clicks] == LINKS
        assert "mailto:help@example.com" in html  # left alone
        assert "shop.example.com/p/" not in html
    else:
        assert clicks == [] and 'href="https://shop.example.com/p/1?utm=x&amp;not=2"' in html
    # Plain-text links are never rewritten.
    assert "This week: https://shop.example.com/p/1" in text

    pixels = got.opens()
    assert len(pixels) == (1 if opens else 0), subject
    if opens:
        assert 'width="1" height="1"' in html

    unsub = got.unsubscribe()
    if unsubscribe:
        assert unsub is not None, subject
        assert got.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        # RFC 8058 4: both headers are covered by the signature.
        assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(got.signed_headers())
        assert f"https://{TRACK_HOST}/u/{unsub}" in html  # the footer link
        assert f"Unsubscribe: https://{TRACK_HOST}/u/{unsub}" in text
    else:
        assert unsub is None and got.message["List-Unsubscribe-Post"] is None, subject

    if not (links or opens or unsubscribe):
        # Nothing on: the body arrives exactly as it was submitted.
        assert got.received.data.endswith(newsletter(subject).split(b"\r\n\r\n", 1)[1])
    else:
        tokens = [(CLICK, c) for c in clicks[:1]] + [(OPEN, p) for p in pixels]
        tokens += [(UNSUBSCRIBE, unsub)] if unsub else []
        for kind, token in tokens:
            found = node.read(kind, token)
            assert (found.message_id, found.recipient) == (mid, "reader@example.net")


async def test_send_api_track_links_and_track_opens_override_the_domain(node: Node) -> None:
    key = await node.sender_key()
    await node.options(1, 1, 0)
    cases = [
        ("api-default", {}, True, True),
        ("api-no-links", {"TrackLinks": "false"}, False, True),
        ("api-no-opens", {"TrackOpens": "false"}, True, False),
        ("api-neither", {"TrackLinks": False, "TrackOpens": "false"}, False, False),
    ]
    for subject, extra, _links, _opens in cases:
        status, data = await node.send_api(key, subject, **extra)
        assert status == 200 and "MessageID" in data, data
    # Domain options off: the message's own TrackLinks / TrackOpens turn them on.
    await node.options(0, 0, 0)
    cases.append(("api-forced", {"TrackLinks": "true", "TrackOpens": "true"}, True, True))
    status, data = await node.send_api(key, "api-forced", TrackLinks="true", TrackOpens="true")
    assert status == 200, data
    for subject, extra, links, opens in cases:
        (got,) = await node.delivered(subject)
        assert await node.verifies(got.received.data), subject
        assert len(got.clicks()) == (len(LINKS) if links else 0), (subject, extra)
        assert len(got.opens()) == (1 if opens else 0), (subject, extra)

    # A scheduled message's tokens count prefetches from its SendAt, not from acceptance.
    later = int(time.time()) + 3600
    status, data = await node.send_api(key, "api-later", SendAt=later, TrackOpens="true")
    assert status == 200, data
    services = node.running.relay.services
    assert services is not None
    async with services.db.read() as conn:
        body = await conn.scalar(
            select(t.messages.c.body).where(t.messages.c.id == data["MessageID"])
        )
    scheduled = email.message_from_bytes(body, policy=email.policy.default)
    assert isinstance(scheduled, EmailMessage)
    (pixel,) = Delivered(cast(Received, None), scheduled).opens()
    assert node.read(OPEN, pixel).minted_at == later

    status, data = await node.send_api(key, "api-bad", TrackLinks="maybe", TrackOpens="2")
    assert status == 400
    assert data["Errors"] == [
        {"Code": 44, "Message": "Invalid TrackLinks and TrackOpens (true or false)"}
    ], data


async def test_multi_recipient_tokens_hits_stats_and_webhook(node: Node) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        res = await node.running.api.call(
            "emailgateway.addwebhook",
            APIKey=node.acct.api_key,
            DomainID=node.acct.domain_id,
            Event="click",
            WebhookURL=receiver.url("/hooks/click"),
        )
        assert res["Success"], res
        await _multi_recipient(node, receiver)
    finally:
        await receiver.stop()


async def _multi_recipient(node: Node, receiver: Receiver) -> None:
    await node.options(1, 1, 1)
    rcpts = ["ann@example.net", "bob@example.org", "cy@example.com"]
    mid = await node.send_smtp("multi", rcpts)
    got = await node.delivered("multi", count=3)
    by_rcpt: dict[str, Delivered] = {}
    for d in got:
        # Each recipient its own transaction with its own body.
        (rcpt,) = d.received.rcpt_tos
        by_rcpt[rcpt] = d
    assert sorted(by_rcpt) == sorted(rcpts)
    seen: set[str] = set()
    for rcpt, d in by_rcpt.items():
        assert await node.verifies(d.received.data), rcpt
        tokens = [*d.clicks(), *d.opens(), d.unsubscribe() or ""]
        assert len(tokens) == len(LINKS) + 2 and all(tokens)
        assert not seen & set(tokens), "tokens shared between recipients"
        seen |= set(tokens)
        for c in d.clicks():
            assert node.read(CLICK, c).recipient == rcpt
        assert node.read(OPEN, d.opens()[0]).recipient == rcpt
        unsub = d.unsubscribe()
        assert unsub is not None and node.read(UNSUBSCRIBE, unsub).recipient == rcpt

    ann, bob = by_rcpt["ann@example.net"], by_rcpt["bob@example.org"]
    # A click through the delivered link: 302 to the original URL, `clicked` for Ann.
    status, headers, _ = await node.hit("GET", f"/c/{ann.clicks()[0]}")
    assert status == 302 and headers["Location"] == LINKS[0]
    # A tampered token is 404, never a redirect.
    token = ann.clicks()[1]
    bad = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    status, headers, _ = await node.hit("GET", f"/c/{bad}")
    assert status == 404 and "Location" not in headers
    # Bob's pixel: `opened` for Bob.
    status, headers, body = await node.hit("GET", f"/o/{bob.opens()[0]}")
    assert status == 200 and headers["Content-Type"] == "image/gif" and body.startswith(b"GIF")

    async def hits() -> list[Any]:
        rows = await node.events(mid, "clicked", "opened")
        return rows if len(rows) >= 2 else []

    await wait_until(hits, what="clicked and opened recorded")
    rows = await hits()
    assert sorted((r.event, r.recipient) for r in rows) == [
        ("clicked", "ann@example.net"),
        ("opened", "bob@example.org"),
    ]
    clicked = next(r for r in rows if r.event == "clicked")
    assert clicked.data["URL"] == LINKS[0] and clicked.data["machine"] is False

    # Cy's one-click unsubscribe (RFC 8058: the POST a mailbox provider sends).
    cy = by_rcpt["cy@example.com"]
    unsub = cy.unsubscribe()
    status, headers, _ = await node.hit(
        "POST",
        f"/u/{unsub}",
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and "Location" not in headers
    (row,) = await node.events(mid, "unsubscribed")
    assert row.recipient == "cy@example.com"
    services = node.running.relay.services
    assert services is not None
    s = t.suppressions
    async with services.db.read() as conn:
        entry = (await conn.execute(select(s).where(s.c.user_id == node.acct.user_id))).one()
    assert (entry.email, entry.source) == ("cy@example.com", "unsubscribe")
    # The next message to Cy is refused at RCPT.
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=node.running.smtp_port, start_tls=False)
    await client.connect()
    await client.login(node.acct.username, node.acct.password)
    await client.mail("app@example.com")

    async def refused() -> bool:
        code, _ = await client.execute_command(b"RCPT", b"TO:<cy@example.com>")
        return code == 550

    await wait_until(refused, what="the unsubscribed address refused at RCPT")
    await client.quit()

    # Statistics count them (unique opens and clicks).
    async def stats() -> dict[str, Any]:
        res = await node.running.api.call(
            "emailgateway.domainstats", APIKey=node.acct.api_key, DomainID=node.acct.domain_id
        )
        return dict(res["Stats"])

    await wait_until(lambda: _has(stats(), Opened=1, Clicked=1), what="domainstats Opened/Clicked")
    domain = await stats()
    assert domain["Sent"] == 3
    res = await node.running.api.call("emailgateway.accountstats", APIKey=node.acct.api_key)
    totals = res["Totals"]
    assert (totals["Sent"], totals["Opened"], totals["Clicked"]) == (3, 1, 1)
    assert (totals["OpenRate"], totals["ClickRate"]) == (33.33, 33.33)

    # The click webhook gets Ann's click.
    await wait_until(lambda: receiver.requests, what="the click webhook")
    payload = receiver.requests[0].json
    assert payload["type"] == "clicked", payload
    assert (payload["data"]["MessageID"], payload["data"]["Recipient"]) == (mid, "ann@example.net")
    assert payload["data"]["Message"]["Headers"]["Subject"] == "multi"


async def _has(stats: Any, **want: int) -> bool:
    got = await stats
    return all(got.get(k) == v for k, v in want.items())


def test_every_smtp_process_of_the_tree_tracks(
    tmp_path: Path,
    nodes: list[ProcessNode],
) -> None:
    """`relay serve` with two SMTP processes: a session served by the worker process is
    tracked as one served by the main process (each builds its own Tracker at start, with the
    cluster's key)."""
    node = ProcessNode(
        tmp_path,
        tmp_path / "var",
        RELAY_SMTP_PROCESSES="2",
        RELAY_DELIVERY_ENABLED="false",
        RELAY_TRACKING_HOST=TRACK_HOST,
    )
    nodes.append(node)
    node.wait_for("READY=1")
    cred = node.new_sender("tracked@example.com")
    by_pid = spread(node, 4)
    sent = 0
    for clients in by_pid.values():
        for client in clients:
            client.login(cred["SMTPUsername"], cred["SMTPPassword"])
            client.sendmail("app@example.com", ["reader@example.net"], newsletter(f"tree-{sent}"))
            client.quit()
            sent += 1
    with sqlite3.connect(tmp_path / "var" / "relay.sqlite3") as conn:
        bodies = [b for (b,) in conn.execute("SELECT body FROM messages")]
    assert len(bodies) == sent >= 4
    for body in bodies:
        assert CLICK_URL.search(body.decode()) and OPEN_URL.search(body.decode())

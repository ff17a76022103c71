"""DKIM signatures of accepted mail verify with dkimpy and with OpenDKIM, against the public key
the domain's DNS record set publishes, served by a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dkim
import dns.asyncresolver
import pytest
from sqlalchemy import select

from relay.smtp import replies
from relay.store import schema as t
from tests.relayfix import Account, RunningRelay, start_relay, stop_relay
from tests.smtpclient import RawSMTP


@pytest.fixture
async def running(tmp_path: Path, db_url: str) -> AsyncIterator[RunningRelay]:
    r, session = await start_relay(tmp_path, db_url)
    yield r
    await stop_relay(r, session)


async def send(running: RunningRelay, acct: Account, data: bytes) -> bytes:
    c, _ = await RawSMTP.connect(running.smtp_port)
    await c.cmd("EHLO client.test")
    await c.login(acct.username, acct.password)
    await c.cmd(f"MAIL FROM:<app@{acct.domain}>")
    await c.cmd("RCPT TO:<r@example.net>")
    await c.cmd("DATA")
    await c.send(data + b".\r\n")
    reply = await c.reply()
    assert reply == replies.QUEUED.format(id=reply.rsplit(" ", 1)[-1]), reply
    await c.close()
    services = running.relay.services
    assert services is not None
    async with services.db.read() as conn:
        body = await conn.scalar(
            select(t.messages.c.body).where(t.messages.c.id == reply.rsplit(" ", 1)[1])
        )
    assert isinstance(body, bytes)
    return body


def stub_dnsfunc(nameserver: str) -> Any:
    """dkimpy's DNS hook, answered by the stub through dnspython (dkimpy calls it from a thread)."""
    host, port = nameserver.split(":")

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        async def query() -> bytes | None:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [host]
            resolver.port = int(port)
            answer = await resolver.resolve(name.decode(), "TXT")
            return b"".join(b"".join(r.strings) for r in answer)

        return asyncio.run(query())

    return lookup


MESSAGES = {
    "plain": b"From: App <app@example.com>\r\nTo: r@example.net\r\nSubject: Hello  there\r\n\r\nBody  text \r\n\r\n\r\n",
    "folded-and-mime": (
        b"From: =?utf-8?q?App=C3=A9?= <app@example.com>\r\nTo: a@example.net,\r\n\tb@example.net\r\n"
        b"Subject: a folded\r\n subject\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\nReply-To: r@example.com\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
    ),
    # Only CRLF.CRLF ends DATA, so the last line ends in CRLF; the rest are bare LFs.
    "bare-lf": b"From: app@example.com\nTo: r@example.net\nSubject: lf\n\nline\nline2\r\n",
    "empty-body": b"From: app@example.com\r\nSubject: nothing\r\n\r\n",
}


@pytest.mark.parametrize("name", list(MESSAGES))
async def test_signature_verifies_with_dkimpy(
    running: RunningRelay, dns_stub: Any, name: str
) -> None:
    acct = await running.new_account()
    host, value = acct.dkim_record
    dns_stub.txt(host, value)
    signed = await send(running, acct, MESSAGES[name])
    assert await asyncio.to_thread(dkim.verify, signed, dnsfunc=stub_dnsfunc(dns_stub.nameserver))
    # Oversigned headers: adding one breaks the signature.
    tampered = signed.replace(b"\r\nSubject:", b"\r\nCc: extra@example.org\r\nSubject:", 1)
    assert not await asyncio.to_thread(
        dkim.verify, tampered, dnsfunc=stub_dnsfunc(dns_stub.nameserver)
    )


def _can_unshare() -> bool:
    if shutil.which("opendkim-testmsg") is None or shutil.which("unshare") is None:
        return False
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(
    not _can_unshare(),
    reason="needs root, unshare and opendkim-testmsg (apt-get install opendkim-tools)",
)
@pytest.mark.parametrize("name", ["plain", "folded-and-mime"])
async def test_signature_verifies_with_opendkim(
    running: RunningRelay, tmp_path: Path, name: str
) -> None:
    acct = await running.new_account()
    host, value = acct.dkim_record
    signed = await send(running, acct, MESSAGES[name])
    path = tmp_path / "signed.eml"
    path.write_bytes(signed)
    root = Path(__file__).parent.parent
    cmd = [
        "unshare",
        "--net",
        "--mount",
        sys.executable,
        "-m",
        "tests.opendkim_verify",
        str(path),
        host,
        value,
    ]
    ok = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, cwd=root, timeout=60
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    path.write_bytes(signed.replace(b"\r\n\r\n", b"\r\n\r\nchanged ", 1))
    bad = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, cwd=root, timeout=60
    )
    assert bad.returncode != 0 and "signature" in (bad.stdout + bad.stderr).lower()

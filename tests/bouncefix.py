"""A relay that delivers to a sink, for the return-path and MX-listener tests: a delivery server
routed to the sink, mail sent over real SMTP submission, the VERP keys the relay uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib

from mta.returnpath import VerpKeys, load_keys
from relay.services import Services
from tests.relayfix import Account, RunningRelay, start_relay
from tests.sink import Sink

SERVER: dict[str, Any] = {
    "DeliveryServerName": "downstream",
    "SendMethodSMTPHost": "127.0.0.1",
    "SendMethodSMTPSecure": "false",
    "SendMethodSMTPTimeout": 10,
    "SendMethodSMTPAuth": False,
    "DomainSettings_LinkTracking": "t.operator.test",
    "DomainSettings_OpenTracking": "o.operator.test",
    "DomainSettings_MFrom": "bounce.operator.test",
}


async def start_delivering(
    tmp_path: Path, db_url: str, **env: str
) -> tuple[RunningRelay, aiohttp.ClientSession]:
    env.setdefault("RELAY_DELIVERY_ENABLED", "true")
    env.setdefault("RELAY_DELIVERY_POLL_INTERVAL", "0.2")
    env.setdefault("RELAY_DKIM_KEY_BITS", "1024")
    return await start_relay(tmp_path, db_url, **env)


def services_of(running: RunningRelay) -> Services:
    services = running.relay.services
    assert services is not None
    return services


async def keys_of(running: RunningRelay) -> VerpKeys:
    """The keys the relay's delivery worker uses (the same database row, or the setting)."""
    services = services_of(running)
    return await load_keys(services.db, services.box, services.settings.security.return_path_secret)


async def route_to(running: RunningRelay, sink: Sink, **settings: Any) -> int:
    """A delivery server for the sink, assigned to the default user group."""
    made = await running.api.call(
        "deliveryserver.create",
        admin=True,
        **{**SERVER, "SendMethodSMTPPort": sink.port, **settings},
    )
    assert made["Success"], made
    assigned = await running.api.call(
        "deliveryserver.assign",
        admin=True,
        DeliveryServerID=made["DeliveryServerID"],
        UserGroupID=1,
    )
    assert assigned["Success"], assigned
    return int(made["DeliveryServerID"])


async def update_server(running: RunningRelay, server_id: int, sink: Sink, **settings: Any) -> None:
    done = await running.api.call(
        "deliveryserver.update",
        admin=True,
        DeliveryServerID=server_id,
        **{**SERVER, "SendMethodSMTPPort": sink.port, **settings},
    )
    assert done["Success"], done


def message(
    sender: str, to: str, subject: str = "hello", extra: str = "", body: str = "hi\r\n"
) -> bytes:
    return (
        f"From: App <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n{body}"
    ).encode()


async def submit(
    running: RunningRelay,
    acct: Account,
    rcpts: list[str],
    data: bytes | None = None,
    sender: str | None = None,
) -> str:
    """Send over SMTP submission; the queue id."""
    sender = sender or f"app@{acct.domain}"
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.smtp_port, start_tls=False)
    await client.connect()
    try:
        await client.login(acct.username, acct.password)
        errors, reply = await client.sendmail(
            sender, rcpts, data or message(sender, ", ".join(rcpts))
        )
    finally:
        await client.quit()
    assert errors == {} and reply.startswith("2.0.0 Ok: queued as "), (errors, reply)
    return reply.rsplit(" ", 1)[1]


async def rcpt_reply(running: RunningRelay, acct: Account, rcpt: str) -> str:
    """The whole reply a submission client gets to RCPT TO:<rcpt>."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.smtp_port, start_tls=False)
    await client.connect()
    try:
        await client.login(acct.username, acct.password)
        await client.mail(f"app@{acct.domain}")
        response = await client.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
    finally:
        await client.quit()
    return f"{response.code} {response.message}"

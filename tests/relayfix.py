"""A whole relay node in the test's event loop, and an account ready to send through it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from relay.admin.app import AdminServer
from relay.config import Settings
from relay.node import running_node
from relay.server import Relay
from relay.services import Services
from tests.conftest import ADMIN_KEY, Api, make_settings
from tests.provision import Account, make_account


@dataclass
class RunningRelay:
    relay: Relay
    settings: Settings
    api: Api
    smtp_port: int
    smtps_port: int

    async def new_account(
        self,
        email: str = "owner@example.com",
        domain: str = "example.com",
        *,
        enable: bool = True,
        **user: Any,
    ) -> Account:
        """A user with an Enabled (unless ``enable`` is false) sender domain and an SMTP
        credential for it (tests/provision.py)."""
        return await make_account(self.api, email, domain, enable=enable, smtp=True, **user)


async def start_relay(
    tmp_path: Path, db_url: str, **env: str
) -> tuple[RunningRelay, aiohttp.ClientSession]:
    env.setdefault("RELAY_DELIVERY_ENABLED", "false")
    # In process, every listener binds port 0 and the test reads the port it got: a port
    # picked free beforehand can be taken by another process before the relay binds it.
    for name in ("SMTP", "SMTPS", "ADMIN", "TRACKING"):
        env.setdefault(f"RELAY_{name}_LISTEN", "127.0.0.1:0")
    settings = make_settings(tmp_path, db_url, **env)
    relay = Relay(settings)
    await relay.start()
    assert relay.admin is not None and relay.smtp is not None
    session = aiohttp.ClientSession()
    api = Api(f"http://127.0.0.1:{relay.admin.port}", session)
    running = RunningRelay(
        relay, settings, api, relay.smtp.bound("smtp")[0][1], relay.smtp.bound("smtps")[0][1]
    )
    return running, session


@contextlib.asynccontextmanager
async def admin_node(settings: Settings) -> AsyncIterator[tuple[Services, Api]]:
    """A node of its own built by relay.node (storage, caches, bus; no SMTP, no delivery) with
    its admin app on a free loopback port, and a client for it: several of these on one
    database (and one Redis) are several relay nodes."""
    async with running_node(settings) as node, aiohttp.ClientSession() as session:
        server = AdminServer(node.services, "127.0.0.1", 0)
        await server.start()
        try:
            yield node.services, Api(f"http://127.0.0.1:{server.port}", session)
        finally:
            await server.stop()


async def stop_relay(running: RunningRelay, session: aiohttp.ClientSession) -> None:
    await session.close()
    await asyncio.wait_for(running.relay.stop(), 60)


__all__ = ["ADMIN_KEY", "Account", "RunningRelay", "admin_node", "start_relay", "stop_relay"]

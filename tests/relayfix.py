"""A whole relay node in the test's event loop, and an account ready to send through it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from relay.config import Settings
from relay.server import Relay
from tests.conftest import ADMIN_KEY, Api, make_settings


@dataclass
class Account:
    user_id: int
    api_key: str
    domain_id: int
    domain: str
    username: str
    password: str
    records: dict[str, list[Any]]

    @property
    def dkim_record(self) -> tuple[str, str]:
        for host, (rtype, value, *_rest) in self.records.items():
            if "._domainkey." in host and rtype == "TXT":
                return host, value
        raise AssertionError("no DKIM record")


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
        u = await self.api.call("user.create", admin=True, EmailAddress=email, **user)
        assert u["Success"], u
        d = await self.api.call("emailgateway.adddomain", APIKey=u["APIKey"], DomainName=domain)
        assert d["Success"], d
        if enable:
            st = await self.api.call(
                "emailgateway.setdomainstatus",
                admin=True,
                DomainID=d["NewSenderDomainID"],
                Status="Enabled",
            )
            assert st["Success"], st
        c = await self.api.call(
            "emailgateway.addsmtp", APIKey=u["APIKey"], DomainID=d["NewSenderDomainID"]
        )
        assert c["Success"], c
        return Account(
            u["UserID"],
            u["APIKey"],
            d["NewSenderDomainID"],
            domain,
            c["SMTP"]["SMTPUsername"],
            c["SMTP"]["SMTPPassword"],
            d["DNSRecords"],
        )


async def start_relay(
    tmp_path: Path, db_url: str, **env: str
) -> tuple[RunningRelay, aiohttp.ClientSession]:
    env.setdefault("RELAY_DELIVERY_ENABLED", "false")
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


async def stop_relay(running: RunningRelay, session: aiohttp.ClientSession) -> None:
    await session.close()
    await asyncio.wait_for(running.relay.stop(), 60)


__all__ = ["ADMIN_KEY", "Account", "RunningRelay", "start_relay", "stop_relay"]

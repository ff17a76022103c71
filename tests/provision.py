"""What tests provision, one way: accounts (user, sender domain, SMTP credential) and routes
(a delivery server for a user group) made through the admin API itself, mail sent over real
SMTP, and ``wait_until`` for everything that happens asynchronously.

Fixed sleeps are not used to wait for something: poll the condition with ``wait_until``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiosmtplib

if TYPE_CHECKING:
    from tests.conftest import Api


@dataclass
class Account:
    """A user with one sender domain, and that domain's SMTP credential when asked for."""

    user_id: int
    api_key: str  # the user's APIKey
    domain_id: int
    domain: str
    username: str = ""
    password: str = ""
    records: dict[str, list[Any]] = field(default_factory=dict)  # DNSRecords of the domain

    def auth(self) -> dict[str, Any]:
        return {"APIKey": self.api_key}

    @property
    def dkim_record(self) -> tuple[str, str]:
        for host, (rtype, value, *_rest) in self.records.items():
            if "._domainkey." in host and rtype == "TXT":
                return host, value
        raise AssertionError("no DKIM record")


async def make_user(api: Api, email: str = "owner@example.com", **extra: Any) -> dict[str, Any]:
    """user.create's answer (``extra``: more of its parameters, e.g. UserGroupID)."""
    res = await api.call("user.create", admin=True, EmailAddress=email, **extra)
    assert res["Success"] is True, res
    return res


async def add_domain(api: Api, api_key: str, name: str, *, enable: bool = True) -> dict[str, Any]:
    """emailgateway.adddomain's answer; the domain set Enabled by the admin unless ``enable``
    is false (it stays Approval Pending)."""
    res = await api.call("emailgateway.adddomain", APIKey=api_key, DomainName=name)
    assert res["Success"] is True, res
    if enable:
        st = await api.call(
            "emailgateway.setdomainstatus",
            admin=True,
            DomainID=res["NewSenderDomainID"],
            Status="Enabled",
        )
        assert st["Success"] is True, st
    return res


async def make_domain(api: Api, api_key: str, name: str, *, enable: bool = True) -> int:
    """A sender domain of the user with ``api_key``: its DomainID."""
    return int((await add_domain(api, api_key, name, enable=enable))["NewSenderDomainID"])


async def make_credential(api: Api, api_key: str, domain_id: int) -> tuple[str, str]:
    """A new SMTP credential of the domain: (username, password)."""
    res = await api.call("emailgateway.addsmtp", APIKey=api_key, DomainID=domain_id)
    assert res["Success"] is True, res
    return res["SMTP"]["SMTPUsername"], res["SMTP"]["SMTPPassword"]


async def make_account(
    api: Api,
    email: str = "owner@example.com",
    domain: str = "example.com",
    *,
    enable: bool = True,
    smtp: bool = False,
    **user: Any,
) -> Account:
    """A user (``user``: more user.create parameters) with sender domain ``domain``, Enabled
    unless ``enable`` is false, and with ``smtp`` an SMTP credential for it."""
    u = await make_user(api, email, **user)
    added = await add_domain(api, u["APIKey"], domain, enable=enable)
    acct = Account(
        u["UserID"],
        u["APIKey"],
        int(added["NewSenderDomainID"]),
        domain,
        records=added["DNSRecords"],
    )
    if smtp:
        acct.username, acct.password = await make_credential(api, acct.api_key, acct.domain_id)
    return acct


async def route_to(
    api: Api,
    port: int,
    *,
    group: int | None = 1,
    secure: str = "false",
    auth: tuple[str, str] | None = None,
    host: str = "127.0.0.1",
    name: str | None = None,
    **settings: Any,
) -> int:
    """A delivery server for ``host:port`` (a test sink), assigned to user group ``group``
    (None: not assigned): its DeliveryServerID. ``settings``: more deliveryserver.create
    parameters, or other values for these."""
    params: dict[str, Any] = {
        "DeliveryServerName": name or f"sink {port}",
        "SendMethodSMTPHost": host,
        "SendMethodSMTPPort": port,
        "SendMethodSMTPSecure": secure,
        "SendMethodSMTPTimeout": 10,
        "SendMethodSMTPAuth": auth is not None,
        "DomainSettings_LinkTracking": "t.example.com",
        "DomainSettings_OpenTracking": "o.example.com",
        "DomainSettings_MFrom": "b.example.com",
    }
    if auth is not None:
        params["SendMethodSMTPUsername"], params["SendMethodSMTPPassword"] = auth
    params.update(settings)
    made = await api.call("deliveryserver.create", admin=True, **params)
    assert made["Success"] is True, made
    server_id = int(made["DeliveryServerID"])
    if group is not None:
        await assign(api, server_id, group)
    return server_id


async def assign(api: Api, server_id: int, group: int = 1) -> None:
    res = await api.call(
        "deliveryserver.assign", admin=True, DeliveryServerID=server_id, UserGroupID=group
    )
    assert res["Success"] is True, res


async def send(
    port: int,
    account: Account,
    recipients: list[str],
    message: bytes,
    *,
    mail_from: str = "app@example.com",
) -> str:
    """Submit over SMTP with the account's credential (plain text on loopback, which the
    relay allows there); the queue id of the 250 reply."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    try:
        await client.login(account.username, account.password)
        errors, reply = await client.sendmail(mail_from, recipients, message)
    finally:
        await client.quit()
    assert errors == {} and reply.startswith("2.0.0 Ok: queued as "), (errors, reply)
    return reply.rsplit(" ", 1)[1]


async def wait_until(
    condition: Any, *, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"
) -> None:
    """Poll ``condition()`` (sync or async) until true; fail after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)

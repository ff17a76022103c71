"""What MTAs ask: PowerMTA's domain lists (sender.domains) and the MX relay-domain check."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update

from relay import config
from relay.services import Services
from relay.store import schema as t
from tests.conftest import Api
from tests.provision import wait_until
from tests.relayfix import admin_node

CHECK = "/api/v1/inbound-relay-domain-check"
FETCH_SCRIPT = Path(__file__).parent.parent / "config" / "powermta" / "fetch-domain-lists.sh"
AUTH_FAILED = {"Errors": [{"Code": 1, "Message": "Authentication failed. Invalid admin API key."}]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_domains(api: Api, admin_key: str, enabled: list[str], pending: list[str]) -> str:
    res = await api.call("user.create", AdminAPIKey=admin_key, EmailAddress="owner@example.com")
    key = str(res["APIKey"])
    for name in enabled + pending:
        extra: dict[str, Any] = {"Subdomain": "bounce"} if name.startswith("custom") else {}
        added = await api.call("emailgateway.adddomain", APIKey=key, DomainName=name, **extra)
        assert added["Success"], added
        if name in enabled:
            res = await api.call(
                "emailgateway.setdomainstatus",
                AdminAPIKey=admin_key,
                DomainID=added["NewSenderDomainID"],
                Status="Enabled",
            )
            assert res["Success"]
    return key


# -- /api/v1/inbound-relay-domain-check ---------------------------------------------------------


async def test_relay_domain_check(api: Api, services: Services) -> None:
    admin = services.settings.admin.api_key
    user_key = await make_domains(api, admin, ["example.com"], ["pending.example.com"])

    # The document's example request.
    status, body = await api.request("GET", f"{CHECK}?domain=example.com", headers=bearer(admin))
    assert (status, body) == (200, {"Success": True, "RelayDomain": "example.com"})
    # A full address, any case; the parameter name is case-insensitive too.
    for value in ("User@Example.COM", "<user@example.com>", "EXAMPLE.COM."):
        status, body = await api.request(
            "GET", CHECK, params={"Domain": value}, headers=bearer(admin)
        )
        assert (status, body) == (200, {"Success": True, "RelayDomain": "example.com"}), value
    # Not relayed: not Enabled, unknown, a subdomain, nothing at all.
    for value in ("pending.example.com", "unknown.test", "sub.example.com", "", "@"):
        status, body = await api.request(
            "GET", CHECK, params={"domain": value}, headers=bearer(admin)
        )
        assert (status, body) == (500, {}), value
    status, body = await api.request("GET", CHECK, headers=bearer(admin))
    assert (status, body) == (500, {})
    # Wrong, missing or non-admin credentials: 403 with the documented body.
    for headers in (bearer("wrong"), {}, bearer(user_key)):
        status, body = await api.request(
            "GET", CHECK, params={"domain": "example.com"}, headers=headers
        )
        assert (status, body) == (403, AUTH_FAILED)

    # The legacy /api.php access: same answers, same statuses.
    for params, expected in (
        (
            {"AdminAPIKey": admin, "Domain": "example.com"},
            (200, {"Success": True, "RelayDomain": "example.com"}),
        ),
        ({"AdminAPIKey": admin, "Domain": "pending.example.com"}, (500, {})),
        ({"AdminAPIKey": "nope", "Domain": "example.com"}, (403, AUTH_FAILED)),
    ):
        got = await api.request(
            "GET", "/api.php", params={"Command": "inbound-relay-domain-check", **params}
        )
        assert got == expected, params
    got = await api.request(
        "POST",
        "/api.php",
        json={"Command": "inbound-relay-domain-check", "Domain": "a@example.com"},
        headers=bearer(admin),
    )
    assert got == (200, {"Success": True, "RelayDomain": "example.com"})


async def test_relay_domain_check_makes_no_database_query(api: Api, services: Services) -> None:
    admin = services.settings.admin.api_key
    await make_domains(api, admin, ["example.com"], [])
    # The first check waits for the reload that enabling the domain asked for.
    await api.request("GET", CHECK, params={"domain": "example.com"}, headers=bearer(admin))
    seen: list[str] = []

    def count(*_args: Any) -> None:
        seen.append("sql")

    engine = services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        for domain in ("example.com", "other.test") * 10:
            await api.request("GET", CHECK, params={"domain": domain}, headers=bearer(admin))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert seen == []


async def test_relay_domain_check_follows_status_changes(api: Api, services: Services) -> None:
    admin = services.settings.admin.api_key
    key = await make_domains(api, admin, [], ["example.com"])
    domain_id = (await api.call("emailgateway.getdomains", APIKey=key))["Domains"][0]["DomainID"]

    async def allowed() -> bool:
        status, _ = await api.request(
            "GET", CHECK, params={"domain": "example.com"}, headers=bearer(admin)
        )
        return status == 200

    assert not await allowed()
    for status, expected in (("Enabled", True), ("Disabled", False), ("Enabled", True)):
        await api.call(
            "emailgateway.setdomainstatus", AdminAPIKey=admin, DomainID=domain_id, Status=status
        )
        assert await allowed() is expected
    await api.call("emailgateway.deletedomain", APIKey=key, DomainID=domain_id)
    assert not await allowed()


@pytest.mark.redis
async def test_relay_domains_follow_changes_on_other_nodes(
    settings: config.Settings, redis_url: str
) -> None:
    settings.redis.url = redis_url
    admin = settings.admin.api_key
    async with admin_node(settings) as (_a, api_a), admin_node(settings) as (_b, api_b):
        key = await make_domains(api_a, admin, [], ["example.com"])
        listing = await api_a.call("emailgateway.getdomains", APIKey=key)
        domain_id = listing["Domains"][0]["DomainID"]

        async def allowed_on_b() -> bool:
            status, _ = await api_b.request(
                "GET", CHECK, params={"domain": "example.com"}, headers=bearer(admin)
            )
            return status == 200

        assert not await allowed_on_b()
        await api_a.call(
            "emailgateway.setdomainstatus", AdminAPIKey=admin, DomainID=domain_id, Status="Enabled"
        )
        await wait_until(allowed_on_b, timeout=5, what="node B relays the domain Enabled on node A")

        async def denied_on_b() -> bool:
            return not await allowed_on_b()

        await api_a.call("emailgateway.deletedomain", APIKey=key, DomainID=domain_id)
        await wait_until(denied_on_b, timeout=5, what="node B stops relaying the deleted domain")


async def test_relay_domains_periodic_reload_is_a_backstop(
    settings: config.Settings,
) -> None:
    """A change nobody announced (made straight in the database) still arrives."""
    settings.admin.relay_domains_refresh = 0.1
    admin = settings.admin.api_key
    async with admin_node(settings) as (services, api):
        key = await make_domains(api, admin, [], ["example.com"])
        async with services.db.write() as conn:
            await conn.execute(update(t.gateway_domains).values(status="Enabled"))

        async def allowed() -> bool:
            status, _ = await api.request(
                "GET", CHECK, params={"domain": "example.com"}, headers=bearer(admin)
            )
            return status == 200

        await wait_until(allowed, timeout=5, what="the periodic reload")
        assert key


# -- sender.domains ----------------------------------------------------------------------------


async def test_sender_domains(api: Api, services: Services) -> None:
    admin = services.settings.admin.api_key
    await make_domains(
        api,
        admin,
        ["b.example.com", "a.example.com", "custom.example.org"],
        ["pending.example.com"],
    )
    enabled = ["a.example.com", "b.example.com", "custom.example.org"]

    # The document's example request (v1, admin key as Bearer).
    status, body = await api.request(
        "POST",
        "/api/v1/sender.domains",
        json={"DomainsResponseFormat": "json"},
        headers=bearer(admin),
    )
    assert (status, body) == (200, {"Success": True, "Domains": enabled})
    # Legacy /api.php with AdminAPIKey; json is the default.
    res = await api.call("sender.domains", AdminAPIKey=admin)
    assert res == {"Success": True, "Domains": enabled, "_status": 200}

    status, text = await api.request(
        "POST",
        "/api/v1/sender.domains",
        json={"DomainsResponseFormat": "powermta-relay-domains"},
        headers=bearer(admin),
    )
    assert status == 200 and isinstance(text, str)
    lines = [x for x in text.splitlines() if not x.startswith("#")]
    # The sender domains and their return-path hosts (bounces arrive there).
    assert lines == [
        "relay-domain a.example.com",
        "relay-domain b.example.com",
        "relay-domain bounce.custom.example.org",
        "relay-domain custom.example.org",
        "relay-domain mail.a.example.com",
        "relay-domain mail.b.example.com",
    ]
    status, text = await api.request(
        "GET",
        "/api.php",
        params={
            "Command": "sender.domains",
            "AdminAPIKey": admin,
            "DomainsResponseFormat": "powermta-bounce-domains",
        },
    )
    assert status == 200 and isinstance(text, str)
    assert [x for x in text.splitlines() if not x.startswith("#")] == [
        "domain bounce.custom.example.org",
        "domain mail.a.example.com",
        "domain mail.b.example.com",
    ]
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(r"domain [a-z0-9.-]+", line)


async def test_sender_domains_errors(api: Api, services: Services) -> None:
    admin = services.settings.admin.api_key
    user_key = await make_domains(api, admin, [], [])
    res = await api.call("sender.domains", AdminAPIKey=admin, DomainsResponseFormat="xml")
    assert res == {
        "Success": False,
        "ErrorCode": 1,
        "ErrorText": "Invalid DomainsResponseFormat",
        "_status": 200,
    }
    status, body = await api.request(
        "POST",
        "/api/v1/sender.domains",
        json={"DomainsResponseFormat": "csv"},
        headers=bearer(admin),
    )
    assert (status, body) == (
        200,
        {"Success": False, "ErrorCode": 1, "ErrorText": "Invalid DomainsResponseFormat"},
    )
    assert (await api.call("sender.domains"))["ErrorCode"] == 99998
    assert (await api.call("sender.domains", APIKey=user_key))["ErrorCode"] == 99999
    _status, body = await api.request("POST", "/api/v1/sender.domains", headers=bearer("wrong"))
    assert body["ErrorCode"] == 99998


async def test_sender_domains_rate_limit(api: Api, services: Services) -> None:
    admin = services.settings.admin.api_key
    for _ in range(100):
        status, _body = await api.request("POST", "/api/v1/sender.domains", headers=bearer(admin))
        assert status == 200
    status, body = await api.request("POST", "/api/v1/sender.domains", headers=bearer(admin))
    assert status == 429 and body["Errors"][0]["Code"] == 429


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_powermta_fetch_script(api: Api, services: Services, tmp_path: Path) -> None:
    """config/powermta/fetch-domain-lists.sh against the real app; `pmta` is a stand-in that
    records its calls (PowerMTA itself is the outside world)."""
    admin = services.settings.admin.api_key
    key = await make_domains(api, admin, ["example.com"], ["pending.example.org"])
    calls = tmp_path / "pmta-calls"
    fake_pmta = tmp_path / "pmta"
    fake_pmta.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake_pmta.chmod(0o755)
    env = {
        **os.environ,
        "RELAY_URL": api.base,
        "RELAY_ADMIN_API_KEY": admin,
        "PMTA_DIR": str(tmp_path),
        "PMTA": str(fake_pmta),
    }

    async def run() -> None:
        proc = await asyncio.create_subprocess_exec("sh", str(FETCH_SCRIPT), env=env)
        assert await proc.wait() == 0

    await run()
    relay = (tmp_path / "relay-domains.conf").read_text().splitlines()
    assert relay[0].startswith("#") and relay[1:] == [
        "relay-domain example.com",
        "relay-domain mail.example.com",
    ]
    bounce = (tmp_path / "relay-bounce-domains.conf").read_text().splitlines()
    assert bounce[1:] == ["domain mail.example.com"]
    assert calls.read_text().splitlines() == ["reload"]
    await run()  # nothing changed: no reload
    assert calls.read_text().splitlines() == ["reload"]
    listing = await api.call("emailgateway.getdomains", APIKey=key)
    pending = next(d for d in listing["Domains"] if d["Status"] == "Approval Pending")
    await api.call(
        "emailgateway.setdomainstatus",
        AdminAPIKey=admin,
        DomainID=pending["DomainID"],
        Status="Enabled",
    )
    await run()
    assert calls.read_text().splitlines() == ["reload", "reload"]
    assert "relay-domain pending.example.org" in (tmp_path / "relay-domains.conf").read_text()


async def test_relay_domains_reload_when_the_bus_reconnects(api: Api, services: Services) -> None:
    """After a lost subscription the node may have missed changes: it reloads the set."""
    admin = services.settings.admin.api_key
    await make_domains(api, admin, [], ["example.com"])
    async with services.db.write() as conn:
        await conn.execute(update(t.gateway_domains).values(status="Enabled"))
    services.bus._reset_all()  # what RedisBus does after resubscribing
    status, body = await api.request(
        "GET", CHECK, params={"domain": "example.com"}, headers=bearer(admin)
    )
    assert (status, body) == (200, {"Success": True, "RelayDomain": "example.com"})

"""The documents' rate limit (100 requests per 60 s per key) on the routes that carry it, in
process and shared by several nodes through Redis. The limit is lowered here to keep the tests
short; the arithmetic is the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay import config
from relay.admin.dispatcher import COMMANDS
from tests.apihelpers import bearer, make_account, sender_key
from tests.conftest import Api, make_settings
from tests.relayfix import admin_node

LIMIT = 5


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> config.Settings:
    return make_settings(tmp_path, db_url, RELAY_ADMIN_RATE_LIMIT_REQUESTS=str(LIMIT))


def test_documented_routes_are_rate_limited() -> None:
    limited = {
        (method, path)
        for spec in COMMANDS.values()
        if spec.rate_limited
        for method, path in spec.routes
    }
    for route in (
        ("POST", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks"),
        ("DELETE", "/api/v1/webhooks"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/email"),
    ):
        assert route in limited, route


async def test_limit_per_key_in_process(api: Api) -> None:
    acct = await make_account(api)
    key, other_key = await sender_key(api, acct), await sender_key(api, acct)
    for _ in range(LIMIT):
        status, _ = await api.request("GET", "/api/v1/webhooks", headers=bearer(key))
        assert status == 200
    async with api.session.get(f"{api.base}/api/v1/webhooks", headers=bearer(key)) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        body = await resp.json()
    assert body["Errors"][0]["Code"] == 429
    assert body["Errors"][0]["Message"].startswith("Too many requests.")
    # Every route of the key shares the budget, /api.php access included.
    for method, path in (
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/email"),
        ("POST", "/api/v1/webhooks"),
        ("DELETE", "/api/v1/webhooks"),
    ):
        status, body = await api.request(method, path, headers=bearer(key), json={})
        assert status == 429 and body["Errors"][0]["Code"] == 429, (method, path)
    via_php = await api.call("emailgateway.getwebhooks.public", SenderAPIKey=key)
    assert via_php["_status"] == 429 and via_php["Errors"][0]["Code"] == 429
    # Another key has its own budget; commands without a limit are not affected.
    status, _ = await api.request("GET", "/api/v1/webhooks", headers=bearer(other_key))
    assert status == 200
    for _ in range(LIMIT + 2):
        res = await api.call("emailgateway.getapis", APIKey=acct.api_key, DomainID=acct.domain_id)
        assert res["Success"] is True


@pytest.fixture
async def two_nodes(tmp_path: Path, db_url: str, redis_url: str) -> AsyncIterator[tuple[Api, Api]]:
    """Two admin apps with their own Services on one database and one Redis."""
    settings = [
        make_settings(
            tmp_path / name,
            db_url,
            RELAY_REDIS_URL=redis_url,
            RELAY_ADMIN_RATE_LIMIT_REQUESTS=str(LIMIT),
        )
        for name in ("a", "b")
    ]
    async with admin_node(settings[0]) as (_, a), admin_node(settings[1]) as (_, b):
        yield a, b


async def test_limit_is_shared_across_nodes_through_redis(two_nodes: tuple[Api, Api]) -> None:
    a, b = two_nodes
    acct = await make_account(a)
    key = await sender_key(a, acct)
    for i in range(LIMIT):
        node = a if i % 2 else b
        status, _ = await node.request("GET", "/api/v1/webhooks", headers=bearer(key))
        assert status == 200
    for node in (a, b):
        status, body = await node.request("GET", "/api/v1/webhooks", headers=bearer(key))
        assert status == 429 and body["Errors"][0]["Code"] == 429

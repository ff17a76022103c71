"""emailgateway.deletesmtp (001; 002's ``smtpid``), and that a deleted credential stops working
on the SMTP side at once, on every node."""

from __future__ import annotations

from pathlib import Path

from relay.smtp import replies
from tests.apihelpers import make_account
from tests.conftest import Api
from tests.provision import wait_until
from tests.relayfix import start_relay, stop_relay
from tests.smtpclient import RawSMTP


async def test_deletesmtp_documented_example_and_errors(api: Api) -> None:
    acct = await make_account(api)
    other = await make_account(api, "other@example.com", "other.example")
    made = await api.call("emailgateway.addsmtp", APIKey=acct.api_key, DomainID=acct.domain_id)
    keep = await api.call("emailgateway.addsmtp", APIKey=acct.api_key, DomainID=acct.domain_id)
    theirs = await api.call("emailgateway.addsmtp", APIKey=other.api_key, DomainID=other.domain_id)
    assert (await api.call("emailgateway.deletesmtp", APIKey=acct.api_key))["ErrorCode"] == 1
    foreign = await api.call(
        "emailgateway.deletesmtp", APIKey=acct.api_key, SMTPID=theirs["NewSMTPID"]
    )
    assert foreign["ErrorCode"] == 2
    assert (await api.call("emailgateway.deletesmtp", APIKey=acct.api_key, SMTPID=99999))[
        "ErrorCode"
    ] == 2
    res = await api.call("emailgateway.deletesmtp", APIKey=acct.api_key, SMTPID=made["NewSMTPID"])
    assert res == {"Success": True, "ErrorCode": 0, "_status": 200}
    listed = await api.call("emailgateway.getsmtps", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert [s["SMTPID"] for s in listed["SMTPs"]] == [keep["NewSMTPID"]]
    again = await api.call("emailgateway.deletesmtp", APIKey=acct.api_key, SMTPID=made["NewSMTPID"])
    assert again["ErrorCode"] == 2
    # 002: EmailGateway.DeleteSMTP with "smtpid" as a string.
    res = await api.call(
        "EmailGateway.DeleteSMTP", APIKey=acct.api_key, smtpid=str(keep["NewSMTPID"])
    )
    assert res["Success"] is True
    listed = await api.call("emailgateway.getsmtps", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert listed["SMTPs"] == []


async def test_deleted_credential_stops_on_every_node(
    tmp_path: Path, db_url: str, redis_url: str
) -> None:
    """Two relay nodes on one database and one Redis: a session open on node B is refused at
    its next command once node A's API deletes the credential."""
    env = {"RELAY_REDIS_URL": redis_url}
    a, session_a = await start_relay(tmp_path / "a", db_url, **env)
    b, session_b = await start_relay(tmp_path / "b", db_url, **env)
    try:
        acct = await a.new_account()
        client, greeting = await RawSMTP.connect(b.smtp_port)
        assert greeting.startswith("220")
        await client.cmd("EHLO client.test")
        assert await client.login(acct.username, acct.password) == replies.AUTH_OK
        assert await client.cmd("MAIL FROM:<app@example.com>") == replies.SENDER_OK
        assert await client.cmd("RSET") == replies.enhanced("250 OK")
        services_b = b.relay.services
        assert services_b is not None
        assert await services_b.directory.credential(acct.username) is not None  # cached on B

        listed = await a.api.call(
            "emailgateway.getsmtps", APIKey=acct.api_key, DomainID=acct.domain_id
        )
        res = await a.api.call(
            "emailgateway.deletesmtp", APIKey=acct.api_key, SMTPID=listed["SMTPs"][0]["SMTPID"]
        )
        assert res["Success"] is True

        # Redis pub/sub delivers asynchronously: wait (bounded) for node B to drop its entry.
        # Without the invalidation it would keep it for the cache TTL (minutes).
        async def dropped() -> bool:
            return await services_b.directory.credential(acct.username) is None

        await wait_until(dropped, timeout=10, what="node B dropped the deleted credential")
        assert await client.cmd("MAIL FROM:<app@example.com>") == replies.AUTH_INVALID
        assert await client.login(acct.username, acct.password) == replies.AUTH_INVALID
        await client.close()
    finally:
        await stop_relay(b, session_b)
        await stop_relay(a, session_a)

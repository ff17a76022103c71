"""Users, groups and sessions (CONTRACT.md's commands beyond the documents)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from relay import config
from relay.services import Services
from relay.store import schema as t
from tests.apihelpers import make_account, make_user, sender_key
from tests.conftest import Api, make_settings


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> config.Settings:
    return make_settings(
        tmp_path,
        db_url,
        RELAY_ADMIN_LOGIN_MAX_FAILURES="3",
        # Per client address: every test client is 127.0.0.1 (tests/test_auth_throttle.py).
        RELAY_ADMIN_LOGIN_MAX_FAILURES_PER_IP="100",
        RELAY_ADMIN_SESSION_TTL="600",
    )


USER_KEYS = {
    "UserID",
    "EmailAddress",
    "Name",
    "UserGroupID",
    "UserGroupName",
    "Status",
    "Trusted",
    "Verified",
    "SendLimitPerHour",
    "MaxSenderDomains",
    "EffectiveSendLimitPerHour",
    "EffectiveMaxSenderDomains",
    "CreatedAt",
    "UpdatedAt",
}


async def test_user_get_and_list(api: Api) -> None:
    made = await make_user(api, "Jane@Example.com", Name="Jane", Trusted=0)
    res = await api.call("user.get", admin=True, UserID=made["UserID"])
    assert res["Success"] is True and res["ErrorCode"] == 0
    user = res["User"]
    assert set(user) == USER_KEYS
    assert user["UserID"] == made["UserID"] and user["EmailAddress"] == "jane@example.com"
    assert user["UserGroupID"] == 1 and user["UserGroupName"] == "Default User Group"
    assert user["Trusted"] is False and user["Verified"] is True and user["Status"] == "Enabled"
    assert user["SendLimitPerHour"] is None and user["EffectiveSendLimitPerHour"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", user["CreatedAt"])
    await make_user(api, "second@example.com")
    listing = await api.call("users.get", admin=True)
    assert listing["TotalUsers"] == 2
    assert [u["EmailAddress"] for u in listing["Users"]] == [
        "jane@example.com",
        "second@example.com",
    ]
    assert (await api.call("user.get", admin=True))["ErrorCode"] == 1
    assert (await api.call("user.get", admin=True, UserID=999))["ErrorCode"] == 2
    assert (await api.call("user.get", APIKey=made["APIKey"], UserID=1))["ErrorCode"] == 99999
    group = await api.call("usergroup.create", admin=True, Name="Other")
    only = await api.call("users.get", admin=True, UserGroupID=group["UserGroupID"])
    assert only["Users"] == [] and only["TotalUsers"] == 0


async def test_user_update_fields_and_invalidation(api: Api, services: Services) -> None:
    made = await make_user(api)
    uid = made["UserID"]
    view = await services.directory.user(uid)  # now cached
    assert view is not None and view.may_send
    group = await api.call(
        "usergroup.create", admin=True, Name="Limited", SendLimitPerHour=50, MaxSenderDomains=2
    )
    res = await api.call(
        "user.update",
        admin=True,
        UserID=uid,
        Name="New Name",
        EmailAddress="NEW@example.com",
        UserGroupID=group["UserGroupID"],
        Status="Disabled",
        Verified=0,
    )
    assert res["Success"] is True
    user = res["User"]
    assert user["Name"] == "New Name" and user["EmailAddress"] == "new@example.com"
    assert user["Status"] == "Disabled" and user["Verified"] is False
    assert user["EffectiveSendLimitPerHour"] == 50 and user["EffectiveMaxSenderDomains"] == 2
    view = await services.directory.user(uid)
    assert view is not None and view.status == "Disabled" and not view.may_send
    assert view.send_limit_per_hour == 50
    # Own limits override the group's; empty returns to the group's.
    res = await api.call("user.update", admin=True, UserID=uid, SendLimitPerHour=5)
    assert res["User"]["SendLimitPerHour"] == 5 and res["User"]["EffectiveSendLimitPerHour"] == 5
    assert (await services.directory.user(uid)).send_limit_per_hour == 5  # type: ignore[union-attr]
    res = await api.call("user.update", admin=True, UserID=uid, SendLimitPerHour="")
    assert res["User"]["SendLimitPerHour"] is None
    assert res["User"]["EffectiveSendLimitPerHour"] == 50
    # A new password works for user.login.
    await api.call(
        "user.update", admin=True, UserID=uid, Password="correct horse", Status="Enabled"
    )
    login = await api.call("user.login", EmailAddress="new@example.com", Password="correct horse")
    assert login["Success"] is True


async def test_user_update_errors(api: Api) -> None:
    a = await make_user(api, "a@example.com")
    await make_user(api, "b@example.com")
    uid = a["UserID"]

    async def code(**params: object) -> object:
        res = await api.call("user.update", admin=True, **params)
        assert res["Success"] is False
        return res["ErrorCode"]

    assert await code(Name="x") == 1
    assert await code(UserID=uid, EmailAddress="not an email") == 2
    assert await code(UserID=uid, EmailAddress="b@example.com") == 3
    assert await code(UserID=uid, UserGroupID=999) == 4
    assert await code(UserID=uid, UserGroupID="x") == 4
    assert await code(UserID=uid, Status="Paused") == 5
    assert await code(UserID=uid, Trusted="maybe") == 6
    assert await code(UserID=999, Name="x") == 7
    assert await code(UserID=uid, SendLimitPerHour=-1) == 8
    assert await code(UserID=uid, MaxSenderDomains="lots") == 8


async def test_user_delete_cascades(api: Api, services: Services) -> None:
    acct = await make_account(api)
    key = await sender_key(api, acct)
    smtp = await api.call("emailgateway.addsmtp", APIKey=acct.api_key, DomainID=acct.domain_id)
    username = smtp["SMTP"]["SMTPUsername"]
    assert await services.directory.credential(username) is not None
    login_user = await make_user(api, "login@example.com", Password="pw-123456")
    session = await api.call("user.login", EmailAddress="login@example.com", Password="pw-123456")
    res = await api.call("user.delete", admin=True, UserID=acct.user_id)
    assert res == {"Success": True, "ErrorCode": 0, "_status": 200}
    assert await services.directory.credential(username) is None
    domain = await services.directory.domain(acct.domain_id)
    assert domain is not None and domain.status == "Deleted"
    status, _ = await api.request(
        "GET", "/api/v1/webhooks", headers={"Authorization": f"Bearer {key}"}
    )
    assert status == 401
    gone = await api.call("emailgateway.getdomain", APIKey=acct.api_key, DomainID=acct.domain_id)
    assert gone["ErrorCode"] == 99998
    assert (await api.call("user.get", admin=True, UserID=acct.user_id))["ErrorCode"] == 2
    assert (await api.call("user.delete", admin=True, UserID=acct.user_id))["ErrorCode"] == 2
    assert (await api.call("user.delete", admin=True))["ErrorCode"] == 1
    # The address can be used again.
    again = await api.call("user.create", admin=True, EmailAddress="owner@example.com")
    assert again["Success"] is True
    # Deleting another user drops their sessions.
    await api.call("user.delete", admin=True, UserID=login_user["UserID"])
    denied = await api.call("emailgateway.getsuppressions", SessionID=session["SessionID"])
    assert denied["ErrorCode"] == 99998


async def test_login_and_session(api: Api, services: Services) -> None:
    made = await make_user(api, "login@example.com", Password="s3cret-pass")
    res = await api.call("user.login", EmailAddress="Login@Example.com", Password="s3cret-pass")
    assert res["Success"] is True and res["ErrorCode"] == 0
    assert res["UserID"] == made["UserID"]
    session_id = res["SessionID"]
    assert len(session_id) >= 40
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", res["ExpiresAt"])
    # The SessionID authenticates user commands; it is stored hashed, with the configured TTL.
    ok = await api.call("emailgateway.adddomain", SessionID=session_id, DomainName="login.example")
    assert ok["Success"] is True
    async with services.db.read() as conn:
        rows = (await conn.execute(select(t.sessions))).all()
    assert len(rows) == 1 and rows[0].id_hash != session_id and session_id not in rows[0].id_hash
    assert 590 < rows[0].expires_at - time.time() <= 600
    # Expired: refused (expiry moved into the past rather than waiting for it).
    async with services.db.write() as conn:
        await conn.execute(update(t.sessions).values(expires_at=time.time() - 1))
    expired = await api.call("emailgateway.getsuppressions", SessionID=session_id)
    assert expired["ErrorCode"] == 99998


async def test_login_errors_and_lockout(api: Api) -> None:
    await make_user(api, "login@example.com", Password="right-password")
    await make_user(api, "nopass@example.com")

    async def code(**params: object) -> object:
        res = await api.call("user.login", **params)
        assert res["Success"] is False
        return res["ErrorCode"]

    assert await code(Password="x") == 1
    assert await code(EmailAddress="login@example.com") == 2
    assert await code(EmailAddress="nobody@example.com", Password="x") == 3
    assert await code(EmailAddress="nopass@example.com", Password="x") == 3
    # login_max_failures is 3 here: two more wrong passwords lock the address...
    assert await code(EmailAddress="login@example.com", Password="wrong") == 3
    assert await code(EmailAddress="login@example.com", Password="wrong") == 3
    assert await code(EmailAddress="login@example.com", Password="wrong") == 3
    assert await code(EmailAddress="login@example.com", Password="right-password") == 4
    # ...and only that address.
    assert await code(EmailAddress="nopass@example.com", Password="x") == 3


async def test_usergroups(api: Api, services: Services) -> None:
    listing = await api.call("usergroups.get", admin=True)
    assert listing["Success"] is True
    default = listing["UserGroups"][0]
    assert default["UserGroupID"] == 1 and default["Name"] == "Default User Group"
    assert {"UserGroupID", "Name", "MaxSenderDomains", "SendLimitPerHour", "UserCount"} <= set(
        default
    )
    made = await api.call(
        "usergroup.create", admin=True, Name="Enterprise Users", SendLimitPerHour=1000
    )
    assert made["Success"] is True and isinstance(made["UserGroupID"], int)
    gid = made["UserGroupID"]
    user = await make_user(api, UserGroupID=gid)
    view = await services.directory.user(user["UserID"])  # cached with the old limit
    assert view is not None and view.send_limit_per_hour == 1000
    res = await api.call(
        "usergroup.update", admin=True, UserGroupID=gid, SendLimitPerHour=10, Name="Enterprise"
    )
    assert res["Success"] is True
    assert res["UserGroup"]["Name"] == "Enterprise" and res["UserGroup"]["SendLimitPerHour"] == 10
    assert res["UserGroup"]["UserCount"] == 1
    # Every member sees the group's new limit at once.
    view = await services.directory.user(user["UserID"])
    assert view is not None and view.send_limit_per_hour == 10
    listing = await api.call("usergroups.get", admin=True)
    assert [(g["UserGroupID"], g["UserCount"]) for g in listing["UserGroups"]] == [(1, 0), (gid, 1)]
    # Errors.
    assert (await api.call("usergroup.create", admin=True))["ErrorCode"] == 1
    assert (await api.call("usergroup.create", admin=True, Name="x", SendLimitPerHour=-5))[
        "ErrorCode"
    ] == 2
    assert (await api.call("usergroup.update", admin=True, Name="x"))["ErrorCode"] == 1
    assert (await api.call("usergroup.update", admin=True, UserGroupID=gid, MaxSenderDomains="a"))[
        "ErrorCode"
    ] == 2
    assert (await api.call("usergroup.update", admin=True, UserGroupID=999, Name="x"))[
        "ErrorCode"
    ] == 3


async def test_group_domain_limit_applies(api: Api) -> None:
    group = await api.call("usergroup.create", admin=True, Name="One domain", MaxSenderDomains=1)
    user = await make_user(api, UserGroupID=group["UserGroupID"])
    first = await api.call("emailgateway.adddomain", APIKey=user["APIKey"], DomainName="a.example")
    assert first["Success"] is True
    second = await api.call("emailgateway.adddomain", APIKey=user["APIKey"], DomainName="b.example")
    assert second["ErrorCode"] == [3]
    await api.call(
        "usergroup.update", admin=True, UserGroupID=group["UserGroupID"], MaxSenderDomains=0
    )
    third = await api.call("emailgateway.adddomain", APIKey=user["APIKey"], DomainName="b.example")
    assert third["Success"] is True

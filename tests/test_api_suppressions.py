"""emailgateway.getsuppressions (CONTRACT.md): paging, search, account and global lists."""

from __future__ import annotations

from tests.apihelpers import make_user
from tests.conftest import Api


async def test_getsuppressions_pages_and_searches(api: Api) -> None:
    user = await make_user(api)
    key = user["APIKey"]
    for i in range(5):
        res = await api.call(
            "emailgateway.addsuppression", APIKey=key, EmailAddress=f"User{i}@Example.com"
        )
        assert res["Success"]
    await api.call(
        "emailgateway.addsuppression", APIKey=key, EmailAddress="other@example.org", Reason="asked"
    )
    await api.call("emailgateway.addsuppression", APIKey=key, EmailAddress="a_b@example.org")
    await api.call("emailgateway.addsuppression", APIKey=key, EmailAddress="axb@example.org")
    res = await api.call("emailgateway.getsuppressions", APIKey=key)
    assert res["Success"] is True and res["ErrorCode"] == 0 and res["TotalRecords"] == 8
    first = res["Suppressions"][0]
    assert set(first) == {"EmailAddress", "Reason", "Source", "UserID", "CreatedAt"}
    assert first["UserID"] == user["UserID"] and first["Source"] == "manual"
    page = await api.call("emailgateway.getsuppressions", APIKey=key, StartFrom=2, RetrieveCount=3)
    assert page["TotalRecords"] == 8 and len(page["Suppressions"]) == 3
    assert page["Suppressions"] == res["Suppressions"][2:5]
    found = await api.call("emailgateway.getsuppressions", APIKey=key, Query="EXAMPLE.ORG")
    assert found["TotalRecords"] == 3
    reason = [s for s in found["Suppressions"] if s["EmailAddress"] == "other@example.org"]
    assert reason[0]["Reason"] == "asked"
    # LIKE wildcards in the query are taken literally.
    literal = await api.call("emailgateway.getsuppressions", APIKey=key, Query="a_b")
    assert [s["EmailAddress"] for s in literal["Suppressions"]] == ["a_b@example.org"]
    assert (await api.call("emailgateway.getsuppressions", APIKey=key, Query="%"))[
        "TotalRecords"
    ] == 0


async def test_getsuppressions_is_per_account_and_admin_names_it(api: Api) -> None:
    a = await make_user(api, "a@example.com")
    b = await make_user(api, "b@example.com")
    await api.call("emailgateway.addsuppression", APIKey=a["APIKey"], EmailAddress="x@example.com")
    assert (await api.call("emailgateway.getsuppressions", APIKey=b["APIKey"]))["TotalRecords"] == 0
    await api.call(
        "emailgateway.addsuppression", admin=True, UserID=0, EmailAddress="g@example.com"
    )
    glob = await api.call("emailgateway.getsuppressions", admin=True, UserID=0)
    assert [s["EmailAddress"] for s in glob["Suppressions"]] == ["g@example.com"]
    assert glob["Suppressions"][0]["UserID"] == 0
    theirs = await api.call("emailgateway.getsuppressions", admin=True, UserID=a["UserID"])
    assert [s["EmailAddress"] for s in theirs["Suppressions"]] == ["x@example.com"]


async def test_getsuppressions_errors(api: Api) -> None:
    user = await make_user(api)
    key = user["APIKey"]
    assert (await api.call("emailgateway.getsuppressions", admin=True))["ErrorCode"] == 3
    assert (await api.call("emailgateway.getsuppressions", admin=True, UserID=999))[
        "ErrorCode"
    ] == 4
    for bad in (
        {"StartFrom": -1},
        {"RetrieveCount": 0},
        {"RetrieveCount": 1001},
        {"StartFrom": "x"},
    ):
        res = await api.call("emailgateway.getsuppressions", APIKey=key, **bad)
        assert res["ErrorCode"] == 6, bad
    assert (await api.call("emailgateway.getsuppressions", APIKey="nope"))["ErrorCode"] == 99998

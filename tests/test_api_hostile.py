"""Hostile API input, each case the issue found, on SQLite and PostgreSQL: integers out of
range, extreme dates, NaN, lone surrogates, deep nesting, bodies with GET and DELETE and JSON
sent as a form, a Disabled user's key. Every answer is the command's documented code, never
an HTTP 500. (tests/test_api_fuzz.py drives every command with such values at random.)"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from relay.admin import dates
from relay.admin.params import INT_MAX, INT_MIN, MALFORMED, MAX_DEPTH, Params, clean
from tests.apihelpers import bearer, make_account, make_user, sender_key
from tests.conftest import ADMIN_KEY, Api

FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # curl -d's default

# -- relay.admin.params and relay.admin.dates, no database --------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (INT_MAX, INT_MAX),
        (INT_MIN, INT_MIN),
        ("  42 ", 42),
        ("+7", 7),
        (3.0, 3),
        (INT_MAX + 1, ValueError),  # >= 2^31: not an INTEGER of PostgreSQL
        (INT_MIN - 1, ValueError),
        (2**63, ValueError),  # SQLite's limit
        (1e300, ValueError),
        ("1e300", ValueError),
        ("9" * 5000, ValueError),  # beyond Python's int() digit limit too
        ("²", ValueError),  # str.isdigit() says yes; int() says no
        ("٣", ValueError),  # a Unicode digit: not a decimal number of the documents
        (0.5, ValueError),
        (True, ValueError),
        ([1], ValueError),
        (MALFORMED, ValueError),
    ],
)
def test_int_accepts_only_what_the_database_stores(value: Any, expected: Any) -> None:
    params = Params({"N": value})
    if expected is ValueError:
        with pytest.raises(ValueError):
            params.int("N")
    else:
        assert params.int("N") == expected


def test_int_with_a_wider_range_and_int_lists() -> None:
    assert Params({"SendAt": 2**40}).int("SendAt", lo=0, hi=2**53) == 2**40
    with pytest.raises(ValueError):
        Params({"SendAt": -1}).int("SendAt", lo=0, hi=2**53)
    assert Params({"ids": "3, x,²,-1, 99999999999,4"}).int_list("ids") == [3, 4]
    assert Params({"ids": [5, "6", 2**40, None, {}]}).int_list("ids") == [5, 6]
    assert Params({"ids": MALFORMED}).int_list("ids") == []


def test_values_that_are_not_data_become_malformed() -> None:
    nested: Any = "x"
    for _ in range(MAX_DEPTH):
        nested = [nested]
    assert clean(nested) is nested  # as deep as allowed
    assert clean([nested]) is MALFORMED
    deep: Any = {}
    for _ in range(100_000):  # deeper than Python's recursion limit: walked without recursion
        deep = {"a": deep}
    assert clean(deep) is MALFORMED
    assert clean("ok \u00e9") == "ok \u00e9"
    for bad in (
        "\ud800",
        ["a", {"b": "x\udfffy"}],
        {"\udc80": 1},
        float("nan"),
        [float("inf")],
        "a\x00",
    ):
        assert clean(bad) is MALFORMED, bad
    p = Params({"S": "\ud800", "\ud800key": "v", "D": {"k": "\ud800"}})
    assert p.raw("S") is MALFORMED and p.present("S")
    assert p.str("S") is None and p.str("S", default="d") == "d"
    assert p.dict("D") is None and p.truthy("S") is False
    with pytest.raises(ValueError):
        p.bool("S")
    assert p.as_dict() == {"s": MALFORMED, "d": MALFORMED}  # no key that is not text


def test_dates_out_of_range_fall_back_to_the_default() -> None:
    for text in (
        "0001-01-01",
        "1969-12-31",
        "9999-12-31",
        "10000-01-01",
        "\uff12\uff10\uff12\uff16-01-01",
    ):
        assert dates.parse_day(text) is None, text
    assert dates.parse_day("1970-01-01") == dt.date(1970, 1, 1)
    assert dates.parse_day("9999-12-30") == dt.date(9999, 12, 30)
    widest = dates.Period(dt.date(1970, 1, 1), dt.date(9999, 12, 30))
    assert widest.until > widest.since
    assert widest.previous().first == dt.date.min  # cut at the calendar's first day
    assert widest.previous().last == dt.date(1969, 12, 31)


# -- over HTTP, on both backends ----------------------------------------------------------------


async def raw_call(
    api: Api, body: bytes | str, *, method: str = "POST", path: str = "/api.php", **kw: Any
) -> tuple[int, Any]:
    return await api.request(method, path, data=body, **kw)


async def test_integers_out_of_range_get_the_documented_code(api: Api) -> None:
    acct = await make_account(api)
    for value in (2**31, 2**63, -(2**63) - 1, 10**30, 1e300, "99999999999999999999", "1e300"):
        res = await api.call("user.get", admin=True, UserID=value)
        assert (res["_status"], res["ErrorCode"]) == (200, 2), (value, res)
        res = await api.call("emailgateway.getdomain", APIKey=acct.api_key, DomainID=value)
        assert (res["_status"], res["ErrorCode"]) == (200, 2), (value, res)
        res = await api.call("emailgateway.getsuppressions", APIKey=acct.api_key, StartFrom=value)
        assert (res["_status"], res["ErrorCode"]) == (200, 6), (value, res)
        res = await api.call("user.update", admin=True, UserID=acct.user_id, SendLimitPerHour=value)
        assert (res["_status"], res["ErrorCode"]) == (200, 8), (value, res)
    # Negative where not allowed.
    res = await api.call("emailgateway.getsuppressions", APIKey=acct.api_key, RetrieveCount=-5)
    assert res["ErrorCode"] == 6
    res = await api.call("deliveryservers.delete", admin=True, DeliveryServerID="-1,²,2147483648")
    assert res["ErrorCode"] == [1]


async def test_extreme_dates_fall_back_to_the_default_period(api: Api) -> None:
    acct = await make_account(api)
    today = dt.datetime.now(dt.UTC).date()
    for start, end in (("0001-01-01", "9999-12-31"), ("9999-12-31", "0001-01-01")):
        res = await api.call(
            "emailgateway.accountstats", APIKey=acct.api_key, StartDate=start, EndDate=end
        )
        assert res["Success"] is True, res
        assert res["EndDate"] == f"{today.isoformat()} 23:59:59"
        status, _ = await api.request(
            "POST",
            "/api.php",
            json={
                "Command": "emailgateway.exportevents",
                "APIKey": acct.api_key,
                "DomainID": acct.domain_id,
                "StartDate": start,
                "EndDate": end,
            },
        )
        assert status == 200
    # The widest valid period works too, and its comparison period is cut at year 1.
    res = await api.call(
        "emailgateway.domainstats",
        APIKey=acct.api_key,
        DomainID=acct.domain_id,
        StartDate="1970-01-01",
        EndDate="9999-12-30",
    )
    assert res["Success"] is True and res["EndDate"] == "9999-12-30 23:59:59", res
    status, body = await api.request(
        "GET",
        "/api/v1/events",
        headers=bearer(await sender_key(api, acct)),
        params={"StartDate": "²", "EndDate": "0001-01-01 00:00:00"},
    )
    assert status == 200 and body["TotalRecords"] == 0


async def test_not_a_number_and_lone_surrogates(api: Api) -> None:
    acct = await make_account(api)
    # NaN and Infinity are not JSON, but Python's parser takes them: not a number of anything.
    status, body = await raw_call(
        api,
        json.dumps({"Command": "user.get", "AdminAPIKey": ADMIN_KEY, "UserID": float("nan")}),
        headers={"Content-Type": "application/json"},
    )
    assert (status, body["ErrorCode"]) == (200, 2)
    # A lone surrogate can be neither stored nor answered: the parameter is invalid.
    admin, user = {"AdminAPIKey": ADMIN_KEY}, {"APIKey": acct.api_key}
    for command, auth, name, code in (
        ("usergroup.create", admin, "Name", 1),
        ("user.create", admin, "EmailAddress", 1),
        ("emailgateway.adddomain", user, "DomainName", [1]),
        ("emailgateway.getsuppressions", user, "Query", 0),
        ("emailgateway.addsuppression", user, "EmailAddress", 1),
    ):
        body_text = json.dumps({"Command": command, **auth, name: "\ud800"})
        assert "\\ud800" in body_text
        status, body = await raw_call(api, body_text, headers={"Content-Type": "application/json"})
        assert status == 200 and body["ErrorCode"] == code, (command, body)
    # In a key, it names no parameter.
    status, body = await raw_call(
        api, json.dumps({"Command": "usergroups.get", "\ud800": 1, "AdminAPIKey": ADMIN_KEY})
    )
    assert body["Success"] is True


async def test_deeply_nested_json_unauthenticated(api: Api) -> None:
    # Deeper than the JSON parser goes: no body at all, so no command.
    for deep in ("[" * 200_000, '{"a":' * 200_000):
        for headers in ({"Content-Type": "application/json"}, FORM, {}):
            status, body = await raw_call(api, deep, headers=headers)
            assert (status, body["ErrorCode"]) == (200, 99997), (headers, body)
    status, body = await raw_call(
        api, '{"a":' * 200_000, path="/api/v1/email", headers={"Content-Type": "application/json"}
    )
    assert status == 401 and body["Errors"][0]["Code"] == 1
    # Parsed, but nested beyond any parameter of the documents: that parameter is invalid.
    value = "[" * 50 + "1" + "]" * 50
    status, body = await raw_call(
        api,
        '{"Command": "user.login", "Password": "x", "EmailAddress": ' + value + "}",
        headers={"Content-Type": "application/json"},
    )
    assert (status, body["ErrorCode"]) == (200, 1)


async def test_bodies_as_the_documents_curl_examples_send_them(api: Api) -> None:
    acct = await make_account(api)
    key = await sender_key(api, acct)
    # curl -d '{...}' without -H: JSON labelled as a form.
    status, body = await raw_call(
        api,
        json.dumps({"Command": "user.get", "AdminAPIKey": ADMIN_KEY, "UserID": 1}),
        headers=FORM,
    )
    assert status == 200 and body["User"]["UserID"] == 1, body
    # ... and without any Content-Type at all.
    status, body = await raw_call(
        api, json.dumps({"Command": "user.get", "AdminAPIKey": ADMIN_KEY, "UserID": 1}).encode()
    )
    assert status == 200 and body["User"]["UserID"] == 1, body
    # GET /api.php with a body.
    status, body = await raw_call(
        api,
        json.dumps({"Command": "user.get", "AdminAPIKey": ADMIN_KEY, "UserID": 1}),
        method="GET",
        headers=FORM,
    )
    assert status == 200 and body["User"]["UserID"] == 1, body
    # 001: curl -X GET /api/v1/events -H "Authorization: Bearer ..." -d '{...}' (a form type).
    status, body = await raw_call(
        api,
        json.dumps({"StartFrom": -1, "RetrieveCount": 10}),
        method="GET",
        path="/api/v1/events",
        headers={**bearer(key), **FORM},
    )
    assert status == 400 and body["Errors"][0]["Code"] == 4, body  # StartFrom was read
    # 002: curl -X GET /api/v1/events -d "StartFrom=0" -d "RetrieveCount=0" (a real form).
    status, body = await raw_call(
        api,
        "StartFrom=0&RetrieveCount=0",
        method="GET",
        path="/api/v1/events",
        headers={**bearer(key), **FORM},
    )
    assert status == 400 and body["Errors"][0]["Code"] == 5, body
    # 002: curl -X DELETE /api/v1/webhooks -d '{"WebhookID":"123"}' (a form type).
    status, body = await raw_call(
        api,
        '{"WebhookID":"123"}',
        method="DELETE",
        path="/api/v1/webhooks",
        headers={**bearer(key), **FORM},
    )
    assert status == 404 and body["Errors"][0]["Code"] == 4, body  # was 1: "missing"
    # A form body with invalid UTF-8 is read like a query string: U+FFFD, never a 500.
    status, body = await raw_call(
        api,
        b"Command=user.create&AdminAPIKey=" + ADMIN_KEY.encode() + b"&EmailAddress=%ff@x.example",
        headers=FORM,
    )
    assert (status, body["ErrorCode"]) == (200, 2)
    # A query field is overridden by the body's.
    status, body = await raw_call(
        api,
        json.dumps({"UserID": 1}),
        path=f"/api.php?Command=user.get&AdminAPIKey={ADMIN_KEY}&UserID=999",
        headers=FORM,
    )
    assert body["User"]["UserID"] == 1


async def test_a_disabled_users_key_and_session_are_refused(api: Api) -> None:
    u = await make_user(api, "jane@example.com", Password="a long passphrase")
    key = u["APIKey"]
    login = await api.call(
        "user.login", EmailAddress="jane@example.com", Password="a long passphrase"
    )
    session = login["SessionID"]
    acct_domain = await api.call("emailgateway.adddomain", APIKey=key, DomainName="jane.example")
    domain_id = acct_domain["NewSenderDomainID"]
    await api.call("emailgateway.setdomainstatus", admin=True, DomainID=domain_id, Status="Enabled")
    added = await api.call("emailgateway.addapi", APIKey=key, DomainID=domain_id, Description="k")
    skey = added["APIKey"]["APIKey"]

    res = await api.call("user.update", admin=True, UserID=u["UserID"], Status="Disabled")
    assert res["Success"] is True

    refused = {
        "Success": False,
        "ErrorCode": 99998,
        "ErrorText": "Authentication failure or session expired",
        "_status": 200,
    }
    for auth in ({"APIKey": key}, {"SessionID": session}):
        assert await api.call("emailgateway.getdomains", **auth) == refused
        assert await api.call("emailgateway.deletedomain", DomainID=domain_id, **auth) == refused
        # An admin command: not "not enough privileges", there is no valid user at all.
        assert await api.call("users.get", **auth) == refused
        status, body = await api.request(
            "GET", "/api/v1/user.senderdomains", params={k: str(v) for k, v in auth.items()}
        )
        assert (status, body) == (
            401,
            {"Errors": [{"Code": 0, "Message": "Authentication failed"}]},
        )
    # No new session either: answered like a wrong password.
    res = await api.call(
        "user.login", EmailAddress="jane@example.com", Password="a long passphrase"
    )
    assert res["ErrorCode"] == 3
    # The send API keeps its documented code for a deactivated account.
    status, body = await api.request(
        "POST",
        "/api/v1/email",
        headers=bearer(skey),
        json={
            "Subject": "s",
            "ContentType": "plain",
            "PlainContent": "x",
            "From": {"email": "a@jane.example"},
            "To": [{"email": "b@example.net"}],
        },
    )
    assert status == 403 and body["Errors"][0]["Code"] == 12, body

    # Enabled again: everything works again.
    await api.call("user.update", admin=True, UserID=u["UserID"], Status="Enabled")
    assert (await api.call("emailgateway.getdomains", APIKey=key))["Success"] is True
    assert (await api.call("emailgateway.getdomains", SessionID=session))["Success"] is True

"""Every registered command, driven with wrong types and extreme values (Hypothesis), on SQLite
and PostgreSQL: never an HTTP 500, never the 99996 internal error, always the documented body
shape with a code the command documents (or one of the codes common to every command).

Each example makes a fresh account (so a command that deletes something deletes only that
example's objects), then calls every command once, through ``/api.php`` or its v1 route,
with valid authentication and valid values for the parameters it does not make hostile, so
the hostile ones reach the command's own code. The CI profile (tests/conftest.py) is
derandomized: the same examples every run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.admin.dispatcher import CommandSpec
from tests.conftest import ADMIN_KEY
from tests.relayfix import Account, RunningRelay, start_relay, stop_relay
from tools.apidoc import generator as apidoc

# A few examples each run keep CI within its budget; for a long hunt, e.g.
# RELAY_FUZZ_EXAMPLES=500 pytest tests/test_api_fuzz.py --timeout 0
EXAMPLES_PER_BACKEND = int(os.environ.get("RELAY_FUZZ_EXAMPLES", "5"))

# Codes every command may answer besides its own (docs/api.md "Conventions"); never 99996.
LEGACY_COMMON = {99997, 99998, 99999}
V1_COMMON = {0, 429}  # v1 authentication failure, rate limit
# Commands that change or delete what later ones of the same example use: called last.
LAST = (
    "user.senderdomain.delete",
    "emailgateway.deleteapi",
    "emailgateway.replaceapi",
    "emailgateway.deletesmtp",
    "emailgateway.deletedomain",
    "deliveryservers.delete",
    "user.delete",
)
# Parameters read by shared helpers rather than named in every docstring.
SHARED_NAMES = ("DomainID", "UserID", "StartFrom", "RetrieveCount", "StartDate", "EndDate")
_ACCESSOR = re.compile(r'\.(?:int|int_list|str|raw|bool|present|has|dict|truthy)\(\s*"(\w+)"')
_AUTH_NAMES = {"command", "apikey", "adminapikey", "sessionid", "senderapikey"}

EXTREMES: list[Any] = [
    2**31,
    2**31 - 1,
    -(2**31) - 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
    1e300,
    -1e300,
    0.5,
    -1,
    0,
    float("nan"),
    float("inf"),
    "99999999999999999999",
    "1e300",
    "-1",
    "\u00b2",
    "0001-01-01",
    "9999-12-31",
    "0001-01-01 00:00:00",
    "9999-12-31 23:59:59",
    "\ud800",
    "a\udfffb",
    "",
    " ",
    "\x00",
    "null",
    True,
    False,
    None,
    [],
    {},
    [None],
    {"a": "\ud800"},
    [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]],
]

_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_text = st.text(st.one_of(st.characters(), _surrogates), max_size=30)
_scalars = st.one_of(
    st.sampled_from(EXTREMES),
    st.integers(1000, 6000).map(lambda n: "x" * n),  # long text
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.booleans(),
    st.none(),
)
HOSTILE = st.one_of(
    st.sampled_from(EXTREMES),
    _scalars,
    st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
        max_leaves=6,
    ),
)


def documented_codes(spec: CommandSpec) -> set[int]:
    codes: set[int] = set()
    for code, _text in apidoc.parse_docstring(spec.func.__doc__).errors:
        first, _, last = code.partition("-")
        codes.update(range(int(first), int(last or first) + 1))
    return codes


def parameter_names(spec: CommandSpec) -> list[str]:
    """What the command documents and what its module reads, plus the shared helpers'."""
    names: set[str] = set(SHARED_NAMES)
    for param in apidoc.parse_docstring(spec.func.__doc__).params:
        names.update(n.strip() for n in param.name.split(","))
    module = __import__(spec.func.__module__, fromlist=["_"])
    names.update(_ACCESSOR.findall(Path(module.__file__ or "").read_text()))
    return sorted(n for n in names if n.lower() not in _AUTH_NAMES)


SPECS = sorted(
    apidoc.specs(), key=lambda s: (s.name in LAST, LAST.index(s.name) if s.name in LAST else 0)
)
NAMES = {spec.name: parameter_names(spec) for spec in SPECS}
_accounts = itertools.count()  # a new account per example, shrinking steps included
CODES = {spec.name: documented_codes(spec) for spec in SPECS}


@pytest.fixture
async def running(tmp_path: Path, db_url: str) -> AsyncIterator[RunningRelay]:
    r, session = await start_relay(
        tmp_path,
        db_url,
        # Room for every command of every example on the rate-limited routes.
        RELAY_ADMIN_RATE_LIMIT_REQUESTS="100000",
        # No verification ever waits for a resolver that is not there.
        RELAY_DNS_NAMESERVERS="127.0.0.1:9",
        RELAY_DNS_TIMEOUT="0.2",
    )
    yield r
    await stop_relay(r, session)


class Fixture:
    """A fresh account of one example, and valid values for the parameters left alone."""

    def __init__(self, running: RunningRelay, acct: Account, sender_key: str) -> None:
        self.running = running
        self.acct = acct
        self.sender_key = sender_key
        self.base: dict[str, Any] = {
            "DomainID": acct.domain_id,
            "UserID": acct.user_id,
            "UserGroupID": 1,
            "SMTPUsername": acct.username,
            "SMTPPassword": acct.password,
            "EmailAddress": "fuzz@example.net",
            "Description": "fuzz",
            "Status": "Enabled",
            "DomainName": "fuzz.example",
            "SenderDomain": "fuzz-sender.example",
            "Subject": "s",
            "ContentType": "plain",
            "PlainContent": "p",
            "From": {"email": f"app@{acct.domain}"},
            "To": [{"email": "to@example.net"}],
            "MailFrom": f"app@{acct.domain}",
            "RcptTo": "to@example.net",
            "RawEmail": f"From: app@{acct.domain}\r\nTo: to@example.net\r\n\r\nx\r\n",
        }

    def auth(self, spec: CommandSpec) -> tuple[dict[str, Any], dict[str, str]]:
        if spec.auth in ("admin", "admin_or_anonymous"):
            return {"AdminAPIKey": ADMIN_KEY}, {}
        if spec.auth in ("user", "user_or_admin"):
            return {"APIKey": self.acct.api_key}, {}
        if spec.auth == "sender_key":
            return {}, {"Authorization": f"Bearer {self.sender_key}"}
        return {}, {}


async def new_fixture(running: RunningRelay, n: int) -> Fixture:
    acct = await running.new_account(f"fuzz{n}@example.org", f"fuzz{n}.example")
    res = await running.api.call(
        "emailgateway.addapi", APIKey=acct.api_key, DomainID=acct.domain_id, Description="k"
    )
    assert res["Success"], res
    return Fixture(running, acct, res["APIKey"]["APIKey"])


def check(spec: CommandSpec, status: int, ctype: str, body: Any, sent: Any) -> None:
    where = f"{spec.name} {sent!r}: {status} {body!r}"[:2000]
    if spec.name == "inbound-relay-domain-check" and status == 500:
        assert body == {}, where  # the documents' "do not relay" answer (docs/dns.md)
        return
    assert status < 500, where
    if not ctype.startswith("application/json"):
        assert 200 <= status < 300, where  # CSV exports, PowerMTA lists
        return
    assert isinstance(body, dict), where
    if "Errors" in body:
        assert 400 <= status < 500, where
        errors = body["Errors"]
        assert isinstance(errors, list) and errors, where
        for err in errors:
            assert set(err) == {"Code", "Message"}, where
            assert isinstance(err["Code"], int) and isinstance(err["Message"], str), where
            assert err["Code"] in CODES[spec.name] | V1_COMMON, where
    elif body.get("Success") is False:
        assert status == 200, where
        codes = body["ErrorCode"]
        codes = codes if isinstance(codes, list) else [codes]
        assert codes and all(isinstance(c, int) for c in codes), where
        assert set(codes) <= CODES[spec.name] | LEGACY_COMMON, where
    else:
        assert 200 <= status < 300, where


def _json(value: Any) -> str:
    # As a client would send them: lone surrogates escaped, NaN and Infinity as Python does.
    return json.dumps(value)


@settings(
    max_examples=EXAMPLES_PER_BACKEND,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_every_command_answers_hostile_values_with_a_documented_error(
    running: RunningRelay, data: st.DataObject
) -> None:
    fx = await new_fixture(running, next(_accounts))
    http = running.api.session
    base_url = running.api.base
    for spec in SPECS:
        names = NAMES[spec.name]
        hostile = data.draw(
            st.dictionaries(st.sampled_from(names), HOSTILE, min_size=1, max_size=4),
            label=spec.name,
        )
        params = {k: v for k, v in fx.base.items() if k in names}
        params.update(hostile)
        auth_fields, headers = fx.auth(spec)
        via_route = bool(spec.routes) and data.draw(st.booleans(), label=f"{spec.name} route")
        if via_route:
            method, path = spec.routes[0]
            body = {**auth_fields, **params}
        else:
            method, path = "POST", "/api.php"
            body = {"Command": spec.name, **auth_fields, **params}
        try:
            async with http.request(
                method,
                base_url + path,
                data=_json(body),
                # A new connection each: a request the server failed must not affect the next.
                headers={"Content-Type": "application/json", "Connection": "close", **headers},
            ) as resp:
                raw = await resp.read()
                ctype = resp.headers.get("Content-Type", "")
        except aiohttp.ClientError as exc:
            raise AssertionError(f"{spec.name} {hostile!r}: {exc!r}") from None
        parsed = json.loads(raw) if ctype.startswith("application/json") else raw
        check(spec, resp.status, ctype, parsed, hostile)


def test_every_command_is_driven() -> None:
    """The fuzz test covers the registry, and knows every command's codes."""
    assert {s.name for s in SPECS} == {s.name for s in apidoc.specs()}
    for spec in SPECS:
        assert NAMES[spec.name], spec.name
        assert 99996 not in CODES[spec.name]

"""Postfix asks the relay: the socketmap table (relay_domains = socketmap:inet:...) and the
policy delegation server (check_policy_service), answered from the relay-domain set of
/api/v1/inbound-relay-domain-check.

First a real Postfix MX started by the test asks them (SMTP through smtplib, and postmap -q),
then the protocols are driven directly with hostile input: bad netstrings, oversized requests,
idle and excess connections.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mta.postfix.lookups import PostfixLookups
from relay.admin.app import AdminServer
from relay.admin.resources import RELAY_DOMAINS
from relay.config import MxSettings
from relay.services import Services
from tests.conftest import Api, free_port
from tests.postfixmx import PostfixMx, Smtpd, require_postfix
from tests.relayfix import RunningRelay, start_relay, stop_relay
from tests.test_api_relay_domains import make_domains

RELAY_DOMAIN = "socketmap:inet:127.0.0.1:{port}:relay_domains"


async def _domains(running: RunningRelay, enabled: list[str], pending: list[str]) -> str:
    return await make_domains(running.api, running.settings.admin.api_key, enabled, pending)


def _relay_domains(running: RunningRelay) -> Any:
    assert running.relay.admin is not None
    return running.relay.admin.app[RELAY_DOMAINS]


async def test_a_real_postfix_asks_the_socketmap_and_the_policy_server(tmp_path: Path) -> None:
    require_postfix()
    socketmap_port, policy_port = free_port(), free_port()
    running, session = await start_relay(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'relay.sqlite3'}",
        RELAY_SOCKETMAP_LISTEN=f"127.0.0.1:{socketmap_port}",
        RELAY_MX_POLICY_LISTEN=f"127.0.0.1:{policy_port}",
    )
    table = RELAY_DOMAIN.format(port=socketmap_port)
    # MX 1: relay_domains is the relay's socketmap.
    # MX 2: relay_domains is a fixed list (some other source), and the relay's policy server
    # restricts it, placed as SMTPD_POLICY_README says: after reject_unauth_destination.
    with_socketmap = PostfixMx({"relay_domains": table}, [Smtpd()])
    with_policy = PostfixMx(
        {
            "relay_domains": "example.com, nope.test, new.example",
            "smtpd_recipient_restrictions": "reject_unauth_destination, check_policy_service "
            f"inet:127.0.0.1:{policy_port}",
            "smtpd_policy_service_timeout": "10s",
        },
        [Smtpd()],
    )
    started: list[PostfixMx] = []
    try:
        user_key = await _domains(running, ["example.com", "relay.test"], ["pending.example"])
        for mx in (with_socketmap, with_policy):
            await asyncio.to_thread(mx.start)
            started.append(mx)

        async def send(mx: PostfixMx, rcpt: str) -> tuple[int, str]:
            return await asyncio.to_thread(mx.send, mx.listeners[0].port, rcpt)

        # relay_domains = socketmap: accepted for the relay's domains, in any spelling.
        assert await send(with_socketmap, "alice@example.com") == (250, "")
        assert await send(with_socketmap, "Bob@RELAY.test") == (250, "")
        for rcpt in ("x@nope.test", "carol@sub.example.com", "p@pending.example"):
            assert await send(with_socketmap, rcpt) == (
                554,
                f"5.7.1 <{rcpt}>: Relay access denied",
            ), rcpt

        # postmap -q: the keys Postfix's tables get, domains and addresses.
        for key, expected in (
            ("example.com", ("found", "example.com")),
            ("Alice@Example.COM", ("found", "example.com")),
            ("nope.test", ("notfound", "")),
            ("sub.example.com", ("notfound", "")),
        ):
            assert await asyncio.to_thread(with_socketmap.postmap, key, table) == expected, key

        # The policy server: DUNNO for a relay domain, REJECT for one Postfix would relay
        # but the relay does not serve.
        assert await send(with_policy, "alice@example.com") == (250, "")
        assert await send(with_policy, "x@nope.test") == (
            554,
            "5.7.1 <x@nope.test>: Recipient address rejected: Relay access denied",
        )

        # A domain enabled through the API is relayed at once.
        added = await running.api.call(
            "emailgateway.adddomain", APIKey=user_key, DomainName="new.example"
        )
        assert await send(with_socketmap, "n@new.example") == (
            554,
            "5.7.1 <n@new.example>: Relay access denied",
        )
        await running.api.call(
            "emailgateway.setdomainstatus",
            AdminAPIKey=running.settings.admin.api_key,
            DomainID=added["NewSenderDomainID"],
            Status="Enabled",
        )
        assert await send(with_socketmap, "n2@new.example") == (250, "")
        assert await send(with_policy, "n3@new.example") == (250, "")

        # The set has not been reloaded for too long (the database is down): "cannot tell",
        # and Postfix answers with a temporary error instead of relaying or refusing.
        domains = _relay_domains(running)
        loaded_at = domains.loaded_at
        domains.loaded_at = time.monotonic() - running.settings.mx.lookup_max_stale - 1
        try:
            status, _ = await asyncio.to_thread(with_socketmap.postmap, "example.com", table)
            assert status == "temp"
            # (An address smtpd has not resolved before: it caches resolved addresses.)
            assert await send(with_socketmap, "later@example.com") == (
                451,
                "4.3.0 <later@example.com>: Temporary lookup failure",
            )
            assert await send(with_policy, "later@example.com") == (
                450,
                "4.3.0 <later@example.com>: Recipient address rejected: "
                "Relay domain list unavailable, try again later",
            )
        finally:
            domains.loaded_at = loaded_at
    except BaseException:
        for mx in started:
            print(f"--- {mx.root}/maillog\n{mx.log_tail(40)}")
        raise
    finally:
        for mx in started:
            await asyncio.to_thread(mx.stop)
        await stop_relay(running, session)


# -- the protocols, directly -----------------------------------------------------------------


@pytest.fixture
async def lookups(services: Services, api: Api) -> AsyncIterator[tuple[PostfixLookups, Api]]:
    """Both listeners over the admin app's relay-domain set, with small limits."""
    server = AdminServer(services, "127.0.0.1", 0)
    await server.start()
    settings = MxSettings(
        socketmap_listen=[f"127.0.0.1:{free_port()}"],
        policy_listen=[f"127.0.0.1:{free_port()}"],
        lookup_max_connections=3,
        lookup_idle_timeout=1.0,
    )
    running = PostfixLookups(settings, server.app[RELAY_DOMAINS])
    await running.start()
    yield running, api
    await running.stop(1.0)
    await server.stop()


def _talk(port: int, payload: bytes, *, wait_close: bool = False) -> bytes:
    """Send ``payload``; what comes back until the server closes (or a pause, when it keeps
    the connection open)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.settimeout(10 if wait_close else 0.5)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return got
            except ConnectionResetError:  # closed with our request unread
                return got
            if not chunk:
                return got
            got += chunk


def _port(lookups: PostfixLookups, kind: str) -> int:
    listener = lookups.socketmap if kind == "socketmap" else lookups.policy
    assert listener is not None
    return listener.bound()[0][1]


def _ns(text: str) -> bytes:
    data = text.encode()
    return str(len(data)).encode() + b":" + data + b","


async def test_socketmap_answers_several_requests_per_connection(
    lookups: tuple[PostfixLookups, Api], services: Services
) -> None:
    running, api = lookups
    await make_domains(api, services.settings.admin.api_key, ["example.com"], ["pending.test"])
    port = _port(running, "socketmap")
    requests = [
        "relay_domains example.com",
        "relay_domains user@EXAMPLE.com",
        "relay_domains <user@example.com.>",
        "relay_domains pending.test",
        "relay_domains sub.example.com",
        "relay_domains ",
        "other_map example.com",
        "relay_domains " + "a" * 1500 + ".example.com",
    ]
    got = await asyncio.to_thread(_talk, port, b"".join(_ns(r) for r in requests))
    assert got == b"".join(
        _ns(a)
        for a in (
            "OK example.com",
            "OK example.com",
            "OK example.com",
            "NOTFOUND ",
            "NOTFOUND ",
            "NOTFOUND ",
            "PERM unknown map name, expected relay_domains",
            "NOTFOUND ",
        )
    )


BAD_NETSTRINGS = [
    b"abc:relay_domains example.com,",  # not a length
    b"025:relay_domains example.com,",  # leading zero
    b"25:relay_domains example.com;",  # wrong terminator
    b"99999:" + b"x" * 100,  # longer than any request may be
    b"1" * 5000,  # a length that never ends
]


async def test_socketmap_closes_on_a_bad_netstring(lookups: tuple[PostfixLookups, Api]) -> None:
    running, _ = lookups
    port = _port(running, "socketmap")
    for payload in BAD_NETSTRINGS:
        # Closed without an answer; a good request before it is still answered.
        assert await asyncio.to_thread(_talk, port, payload, wait_close=True) == b"", payload
        good = _ns("relay_domains nope.test")
        assert await asyncio.to_thread(_talk, port, good + payload, wait_close=True) == _ns(
            "NOTFOUND "
        ), payload


async def test_idle_and_excess_connections_are_closed(
    lookups: tuple[PostfixLookups, Api],
) -> None:
    running, _ = lookups
    port = _port(running, "socketmap")

    def scenario() -> tuple[bytes, float]:
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            time.sleep(0.2)
            # Over lookup_max_connections: closed at once, nothing answered.
            extra = _talk(port, _ns("relay_domains example.com"), wait_close=True)
            # An idle one is closed after lookup_idle_timeout (1 s here).
            started = time.monotonic()
            held[0].settimeout(10)
            assert held[0].recv(10) == b""
            return extra, time.monotonic() - started
        finally:
            for sock in held:
                sock.close()

    extra, idle = await asyncio.to_thread(scenario)
    assert extra == b""
    assert idle < 9  # closed by the server, not by our own 10 s timeout


def _policy(**attrs: str) -> bytes:
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.10",
        "sender": "someone@sender.test",
        "recipient": "",
        "instance": "1a2b.66443e1f.9c1d2.0",
    }
    base.update(attrs)
    return "".join(f"{k}={v}\n" for k, v in base.items()).encode() + b"\n"


async def test_policy_answers_and_refuses_bad_requests(
    lookups: tuple[PostfixLookups, Api], services: Services
) -> None:
    running, api = lookups
    await make_domains(api, services.settings.admin.api_key, ["example.com"], [])
    port = _port(running, "policy")
    # One connection, several requests (as Postfix reuses it); repeated names: the first wins.
    got = await asyncio.to_thread(
        _talk,
        port,
        _policy(recipient="alice@example.com")
        + _policy(recipient="x@nope.test")
        + _policy(protocol_state="DATA", recipient="x@nope.test")
        + _policy(recipient="")
        + _policy(recipient="Bob@Example.COM").replace(b"\n\n", b"\nrecipient=x@nope.test\n\n"),
    )
    assert got == (
        b"action=DUNNO\n\n"
        b"action=REJECT 5.7.1 Relay access denied\n\n"
        b"action=DUNNO\n\n"
        b"action=DUNNO\n\n"
        b"action=DUNNO\n\n"
    )
    for bad in (
        _policy(recipient="a@example.com").replace(b"request=smtpd_access_policy", b"request=x"),
        b"no equals sign\n\n",
        b"name=" + b"v" * 5000 + b"\n\n",
        b"".join(f"a{i}=b\n".encode() for i in range(200)) + b"\n",
    ):
        # No answer: the connection is closed (Postfix applies its default_action).
        assert await asyncio.to_thread(_talk, port, bad, wait_close=True) == b""


def test_settings_and_their_validation() -> None:
    from relay import config

    s = config.load(
        None,
        env={
            "RELAY_SOCKETMAP_LISTEN": "127.0.0.1:10027, [::1]:10027",
            "RELAY_MX_POLICY_LISTEN": "127.0.0.1:10029",
            "RELAY_MX_LOOKUP_MAX_STALE": "60",
        },
    )
    assert s.mx.socketmap_listen == ["127.0.0.1:10027", "[::1]:10027"]
    assert (s.mx.policy_listen, s.mx.lookup_max_stale) == (["127.0.0.1:10029"], 60.0)
    assert config.load(None, env={}).mx.socketmap_listen == []  # off by default
    with pytest.raises(config.ConfigError) as bad:
        config.load(
            None,
            env={
                "RELAY_SOCKETMAP_LISTEN": "127.0.0.1",
                "RELAY_MX_LOOKUP_MAX_CONNECTIONS": "0",
                "RELAY_POWERMTA_SUPPRESS_CATEGORIES": "bad-mailbox,no-such-category",
                "RELAY_POWERMTA_RELAY_DOMAINS_FILE": "../escape.conf",
            },
        )
    assert bad.value.problems == [
        "mx.socketmap_listen: missing port in '127.0.0.1'",
        "mx.lookup_max_connections: must be at least 1",
        "powermta.suppress_categories: unknown category 'no-such-category'",
        "powermta.relay_domains_file: a file name inside powermta.include_dir",
    ]

"""The test sink itself: what other tests rely on when they program it."""

from __future__ import annotations

from typing import Any

import aiosmtplib
import pytest

from tests.sink import Sink

BODY = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nline\r\n.dot line\r\n"


async def send(sink: Sink, **kwargs: Any) -> None:
    kwargs.setdefault("start_tls", False)
    await aiosmtplib.send(
        BODY,
        sender="a@example.com",
        recipients=["b@example.net"],
        hostname="127.0.0.1",
        port=sink.port,
        **kwargs,
    )


async def test_records_exact_bytes_and_per_recipient_replies(sink: Sink) -> None:
    sink.rcpt_replies["nobody@example.net"] = "550 5.1.1 no such user"
    client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, start_tls=False)
    await client.connect()
    errors, _ = await client.sendmail(
        "a@example.com", ["b@example.net", "nobody@example.net"], BODY
    )
    assert errors["nobody@example.net"].code == 550
    await client.sendmail("", ["c@example.net"], BODY)
    await client.quit()
    first, second = sink.messages
    assert first.data == BODY and first.rcpt_tos == ["b@example.net"]
    assert first.mail_from == "a@example.com" and second.mail_from == ""
    assert first.connection == second.connection == 1 and sink.connections == 1


async def test_fail_first_then_accept(sink: Sink) -> None:
    sink.fail_first(2, "451 4.3.0 try again later")
    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPDataError) as err:
            await send(sink)
        assert err.value.code == 451
    await send(sink)
    assert len(sink.messages) == 1 and sink.attempts["DATA"] == 3


async def test_dropped_connection(sink: Sink) -> None:
    sink.fail_first(1, None, stage="MAIL")
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await send(sink)
    await send(sink)
    assert len(sink.messages) == 1


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_and_auth(make_sink: Any, mode: str) -> None:
    sink = await make_sink(tls=mode, auth=("user", "pw"))
    tls: dict[str, Any] = {"use_tls": True} if mode == "implicit" else {"start_tls": True}
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await send(sink, cert_bundle=sink.ca_file, username="user", password="wrong", **tls)
    await send(sink, cert_bundle=sink.ca_file, username="user", password="pw", **tls)
    (msg,) = sink.messages
    assert msg.tls and msg.auth_user == "user" and sink.auth_failures >= 1

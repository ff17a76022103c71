"""PowerMTA delivery servers: the PowerMTA / PowerMTAVirtualMTA fields of deliveryserver.create,
update and deliveryservers.get, and the X-Job / X-Virtual-MTA headers mail to them carries."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim

from mta.powermta.inject import injection_body, without_injection_headers
from relay.directory import DeliveryServerView
from tests.conftest import Api
from tests.relayfix import start_relay, stop_relay
from tests.sink import Sink
from tests.test_api_deliveryservers import CREATE, UPDATE, create, get
from tests.test_dkim import stub_dnsfunc


def _server(powermta: bool, vmta: str = "") -> DeliveryServerView:
    return DeliveryServerView(
        id=1, name="pmta", host="127.0.0.1", port=25, secure="false", timeout=10, auth=False,
        username="", password="", mfrom_domain="", enforced_from="", senderinfo_as_mfrom=False,
        senderinfo_as_from=False, powermta=powermta, powermta_vmta=vmta,
    )  # fmt: skip


async def test_create_get_update_powermta_fields(api: Api) -> None:
    plain = await create(api)
    assert (await get(api, plain))["PowerMTA"] is False
    assert (await get(api, plain))["PowerMTAVirtualMTA"] == ""

    sid = await create(api, PowerMTA=1, PowerMTAVirtualMTA="pool-marketing")
    body = await get(api, sid)
    assert (body["PowerMTA"], body["PowerMTAVirtualMTA"]) == (True, "pool-marketing")

    # Omitted on update: kept.
    res = await api.call("deliveryserver.update", admin=True, DeliveryServerID=sid, **UPDATE)
    assert res["Success"] is True, res
    body = await get(api, sid)
    assert (body["PowerMTA"], body["PowerMTAVirtualMTA"]) == (True, "pool-marketing")

    # Given: replaced ("0" and "" as form bodies send them).
    res = await api.call(
        "deliveryserver.update",
        admin=True,
        DeliveryServerID=sid,
        **UPDATE,
        PowerMTA="0",
        PowerMTAVirtualMTA="",
    )
    assert res["Success"] is True, res
    body = await get(api, sid)
    assert (body["PowerMTA"], body["PowerMTAVirtualMTA"]) == (False, "")


async def test_invalid_powermta_fields_are_refused_with_their_codes(api: Api) -> None:
    res = await api.call(
        "deliveryserver.create",
        admin=True,
        **CREATE,
        PowerMTA="maybe",
        PowerMTAVirtualMTA="pool a\r\nBcc: x@example.net",
    )
    assert res["Success"] is False
    assert res["ErrorCode"] == [18, 19], res
    # Nothing was written.
    listed = await api.call("deliveryservers.get", admin=True)
    assert listed["Success"] is False


def test_injection_headers_only_for_powermta_servers() -> None:
    message = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
    assert injection_body(_server(False, "pool"), "q1", message) is message
    assert injection_body(_server(True), "q1", message) == b"X-Job: q1\r\n" + message
    assert (
        injection_body(_server(True, "vmta-ip1"), "q1", message)
        == b"X-Job: q1\r\nX-Virtual-MTA: vmta-ip1\r\n" + message
    )


def test_submitters_copies_are_removed_folded_lines_included() -> None:
    message = (
        b"X-Job: someone-elses-id\r\nFrom: a@example.com\r\nx-virtual-mta: premium\r\n"
        b"  -pool\r\nSubject: hi\r\n\r\nX-Job: in the body stays\r\n"
    )
    assert without_injection_headers(message) == (
        b"From: a@example.com\r\nSubject: hi\r\n\r\nX-Job: in the body stays\r\n"
    )
    out = injection_body(_server(True, "pool-a"), "q2", message)
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"x-job:") == 1 and head.count(b"x-virtual-mta:") == 1
    assert out.startswith(b"X-Job: q2\r\nX-Virtual-MTA: pool-a\r\n")


async def test_mail_to_a_powermta_server_carries_x_job_and_still_verifies(
    tmp_path: Path, db_url: str, sink: Sink, dns_stub: Any
) -> None:
    running, session = await start_relay(
        tmp_path,
        db_url,
        RELAY_DELIVERY_ENABLED="true",
        RELAY_DELIVERY_POLL_INTERVAL="0.2",
    )
    try:
        acct = await running.new_account()
        made = await running.api.call(
            "deliveryserver.create",
            admin=True,
            **{
                **CREATE,
                "SendMethodSMTPHost": "127.0.0.1",
                "SendMethodSMTPPort": sink.port,
                "SendMethodSMTPSecure": "false",
                "SendMethodSMTPAuth": False,
                "PowerMTA": 1,
                "PowerMTAVirtualMTA": "vmta-ip1",
            },
        )
        assert made["Success"], made
        assigned = await running.api.call(
            "deliveryserver.assign",
            admin=True,
            DeliveryServerID=made["DeliveryServerID"],
            UserGroupID=1,
        )
        assert assigned["Success"], assigned
        dns_stub.txt(*acct.dkim_record)

        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=running.smtp_port, start_tls=False)
        await client.connect()
        await client.login(acct.username, acct.password)
        _errors, reply = await client.sendmail(
            "app@example.com",
            ["a@example.net"],
            b"From: app@example.com\r\nX-Job: forged\r\nSubject: pmta\r\n\r\nhello\r\n",
        )
        await client.quit()
        message_id = reply.rsplit(" ", 1)[1]

        await sink.wait_for(lambda s: len(s.messages) == 1)
        data = sink.messages[0].data
        assert data.startswith(f"X-Job: {message_id}\r\nX-Virtual-MTA: vmta-ip1\r\n".encode())
        assert b"forged" not in data
        assert await asyncio.to_thread(dkim.verify, data, dnsfunc=stub_dnsfunc(dns_stub.nameserver))
    finally:
        await stop_relay(running, session)

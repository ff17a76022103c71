"""Scheduled sending (the send API's SendAt) on a running `relay serve` (its delivery worker in a
child process) with a real sink, on SQLite and PostgreSQL: the message is committed at once,
shows as scheduled in `relay queue`, survives a restart, is not delivered before its time and
is delivered within seconds after it. The poll interval is far longer than the test: only the
worker's timer for the earliest scheduled time can deliver on time."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.provision import wait_until
from tests.sink import Sink
from tests.test_e2e_process import Node
from tests.test_queuecli import Cli

# Time enough for what happens before SendAt here: a stop of the node, a `relay queue` run and
# a start (about 5 s on an idle machine, 10 s with other tests running).
LEAD = 15
# "Within seconds": how late after SendAt the sink may see it (the timer makes it ~0.1 s; the
# poll interval would make it minutes).
LATE = 2.0

EXAMPLE = {
    "Subject": "Later",
    "ContentType": "plain",
    "PlainContent": "Scheduled.",
    "From": {"name": "App", "email": "app@example.com"},
    "To": [{"name": "Later", "email": "later@example.net"}],
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    settings = {"RELAY_DELIVERY_POLL_INTERVAL": "600"}
    if request.param == "postgres":
        settings["RELAY_DATABASE_URL"] = request.getfixturevalue("pg_url")
    yield settings


def sender_key(node: Node) -> str:
    """A user with an Enabled example.com: the domain's send API key."""
    user = node.call("user.create", AdminAPIKey=node.admin_key, EmailAddress="s@example.com")
    dom = node.call("emailgateway.adddomain", APIKey=user["APIKey"], DomainName="example.com")
    node.call(
        "emailgateway.setdomainstatus",
        AdminAPIKey=node.admin_key,
        DomainID=dom["NewSenderDomainID"],
        Status="Enabled",
    )
    made = node.call(
        "emailgateway.addapi",
        APIKey=user["APIKey"],
        DomainID=dom["NewSenderDomainID"],
        Description="scheduled",
    )
    return str(made["APIKey"]["APIKey"])


def send(node: Node, key: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    """POST /api/v1/email: (HTTP status, body)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.admin}/api/v1/email",
        json.dumps({**EXAMPLE, **fields}).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def scheduled(node: Node) -> dict[str, Any]:
    """The admin API's queue.list of scheduled recipients: recipient -> item."""
    res = node.call("queue.list", AdminAPIKey=node.admin_key, State="scheduled")
    assert res["Success"] is True, res
    return {i["Recipient"]: i for i in res["Recipients"]}


async def test_a_scheduled_message_goes_out_at_its_time_across_a_restart(
    tmp_path: Path, nodes: list[Node], make_sink: Any, database: dict[str, str]
) -> None:
    sink: Sink = await make_sink()
    node = Node(tmp_path, tmp_path / "var", **database)
    nodes.append(node)
    await asyncio.to_thread(node.wait_for, "READY=1")
    key = await asyncio.to_thread(sender_key, node)
    await asyncio.to_thread(node.route_to, sink.port)

    send_at = int(time.time()) + LEAD
    status, res = await asyncio.to_thread(send, node, key, SendAt=send_at)
    assert status == 200, res
    queue_id = res["MessageID"]
    # Committed now (its accepted event), and scheduled in the queue's views.
    item = (await asyncio.to_thread(scheduled, node))["later@example.net"]
    assert (item["QueueID"], item["NextAttemptAt"]) == (queue_id, send_at)
    (msg,) = (
        await asyncio.to_thread(
            node.call, "emailgateway.getmessage", AdminAPIKey=node.admin_key, MessageID=queue_id
        )
    )["Messages"]
    assert msg["ScheduledAt"] == send_at
    assert [e["event"] for e in msg["Events"]] == ["accepted"]

    # A restart: the schedule lives in the database only, which `relay queue` reads while the
    # node is down.
    code, _, err = await asyncio.to_thread(node.stop)
    assert code == 0, err[-3000:]
    cli = Cli(node, database)
    item = (await cli.listed("--state", "scheduled"))["later@example.net"]
    assert (item["QueueID"], item["State"], item["NextAttemptAt"]) == (
        queue_id, "scheduled", send_at
    )  # fmt: skip
    node = Node(tmp_path, tmp_path / "var", **database)
    nodes.append(node)
    await asyncio.to_thread(node.wait_for, "READY=1")
    assert "later@example.net" in await asyncio.to_thread(scheduled, node)

    # Not before its time: nothing at the sink right before it ...
    await wait_until(lambda: time.time() >= send_at - 0.3, what="just before SendAt")
    assert sink.delivered_to("later@example.net") == 0
    assert time.time() < send_at, f"LEAD ({LEAD} s) too short on this machine"
    # ... and there within seconds after it.
    try:
        await sink.wait_for(lambda s: s.delivered_to("later@example.net") == 1, timeout=60)
    except AssertionError as exc:  # rare on a busy machine: what the relay was doing
        raise AssertionError(f"{exc}; relay log: {node.err_path.read_text()[-8000:]}") from None
    (received,) = sink.messages
    assert send_at <= received.received_at < send_at + LATE, received.received_at - send_at
    assert b"Subject: Later" in received.data
    assert await asyncio.to_thread(scheduled, node) == {}

    # SendAt out of its window or not a time: refused at once, with what is wrong.
    now = int(time.time())
    for value, code in ((now - 3600, 43), (now + 73 * 3600, 43), ("noon", 42), (1.5, 42)):
        status, res = await asyncio.to_thread(send, node, key, SendAt=value)
        assert (status, [e["Code"] for e in res["Errors"]]) == (400, [code]), (value, res)

    code, _, err = await asyncio.to_thread(node.stop)
    assert code == 0, err[-3000:]

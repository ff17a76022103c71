"""Webhooks in `relay serve`'s process tree: the delivery process posts them, and a delivery
process killed in the middle of posting loses nothing (its leases expire, the new process
posts them)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.provision import wait_until
from tests.test_e2e_process import Node, child_pids
from tests.webhookreceiver import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    await rx.start()
    yield rx
    await rx.stop()


async def test_delivery_process_posts_and_a_killed_one_loses_nothing(
    tmp_path: Path, nodes: list[Node], make_sink: Any, receiver: Receiver
) -> None:
    sink = await make_sink()
    node = Node(
        tmp_path,
        tmp_path / "var",
        RELAY_WEBHOOKS_ALLOW_NETWORKS="127.0.0.0/8",
        RELAY_WEBHOOKS_POLL_INTERVAL="0.2",
        RELAY_WEBHOOKS_TIMEOUT="2",
        RELAY_WEBHOOKS_LEASE_SECONDS="12",
        RELAY_DELIVERY_POLL_INTERVAL="0.2",
    )
    nodes.append(node)
    await asyncio.to_thread(node.wait_for, "READY=1")
    key = node.admin_key
    user = await asyncio.to_thread(
        node.call, "user.create", AdminAPIKey=key, EmailAddress="w@example.com"
    )
    dom = await asyncio.to_thread(
        node.call, "emailgateway.adddomain", APIKey=user["APIKey"], DomainName="example.com"
    )
    domain_id = dom["NewSenderDomainID"]
    await asyncio.to_thread(
        node.call,
        "emailgateway.setdomainstatus",
        AdminAPIKey=key,
        DomainID=domain_id,
        Status="Enabled",
    )
    cred = (
        await asyncio.to_thread(
            node.call, "emailgateway.addsmtp", APIKey=user["APIKey"], DomainID=domain_id
        )
    )["SMTP"]
    made = await asyncio.to_thread(
        node.call,
        "emailgateway.addwebhook",
        APIKey=user["APIKey"],
        DomainID=domain_id,
        Event="delivery",
        WebhookURL=receiver.url("/p"),
    )
    assert made["Success"], made
    await asyncio.to_thread(node.route_to, sink.port)

    receiver.hold("/p")
    for i in range(3):
        await asyncio.to_thread(node.send, cred, f"r{i}@example.net", "webhooks")
    await wait_until(lambda: receiver.open["/p"] >= 1, what="a post in flight")
    # The delivery process (which posts the webhooks) dies in the middle of posting.
    (child,) = child_pids(node.proc.pid, "delivery")
    os.kill(child, signal.SIGKILL)
    receiver.release("/p")
    await wait_until(
        lambda: child_pids(node.proc.pid, "delivery") not in ([], [child]),
        timeout=60,
        what="a new delivery process",
    )

    # Its leases expire (webhooks.lease_seconds) and the new process posts everything.
    async def history() -> dict[str, Any]:
        return await asyncio.to_thread(
            node.call,
            "emailgateway.getwebhookdeliveries",
            APIKey=user["APIKey"],
            DomainID=domain_id,
            WebhookID=made["NewWebhookID"],
        )

    async def all_delivered() -> bool:
        res = await history()
        done = {a["Recipient"] for a in res["Attempts"] if a["Result"] == "delivered"}
        return res["PendingDeliveries"] == 0 and len(done) == 3

    await wait_until(all_delivered, timeout=90, interval=0.5, what="every webhook delivered")
    assert {r.json["data"]["Recipient"] for r in receiver.at("/p")} == {
        f"r{i}@example.net" for i in range(3)
    }
    # One webhook-id per delivery, whatever was posted twice around the kill.
    by_recipient: dict[str, set[str]] = {}
    for r in receiver.at("/p"):
        by_recipient.setdefault(r.json["data"]["Recipient"], set()).add(r.webhook_id)
    assert all(len(ids) == 1 for ids in by_recipient.values())

    code, _, err = await asyncio.to_thread(node.stop)
    assert code == 0, err[-3000:]

"""Delivery leases: short, renewed while the work goes on, and a restart frees what an earlier
incarnation of this node held (relay/leases.py, mta/worker.py). Both backends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from relay import leases
from relay.queue.backend import open_backend
from relay.services import Services
from relay.webhooks.store import open_store
from tests.apihelpers import Api
from tests.provision import make_account, route_to, wait_until
from tests.sink import Sink
from tests.test_delivery import (  # noqa: F401  (fixtures)
    delivery,
    recipients_of,
    submit,
    wait_states,
    writer,
)
from tests.test_webhook_delivery import receiver  # noqa: F401  (the fixture)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_owner_ids_and_which_are_stale() -> None:
    mine = leases.owner_id("node-a")
    node, pid, rand = mine.split(":")
    assert (node, int(pid), len(rand)) == ("node-a", os.getpid(), 6)
    assert leases.node_prefix(mine) == "node-a:"
    assert leases.node_prefix(f"{mine}/webhooks/1/ab") == "node-a:"
    assert leases.owner_id("x" * 100).startswith("x" * leases.NODE_MAX + ":")
    assert not leases.stale(mine, mine)
    assert not leases.stale(f"{mine}/webhooks/{pid}/abcd", mine)  # this incarnation's own
    assert leases.stale(f"node-a:{pid}:ffffff", mine)  # this pid, another incarnation
    assert leases.stale(f"node-a:{dead_pid()}:abcdef", mine)  # gone
    assert leases.stale(f"node-a:{dead_pid()}:abcdef/webhooks/1/x", mine)
    assert not leases.stale(f"node-a:{os.getppid()}:abcdef", mine)  # alive: a sibling
    assert not leases.stale("node-a:notapid:abcdef", mine)


def test_an_exited_process_not_yet_reaped_is_stale() -> None:
    """A killed relay's children are reaped by PID 1, which in a container may do it late or
    never: until then kill(pid, 0) still finds them, but they hold nothing."""
    mine = leases.owner_id("node-a")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Exited, and left unreaped: WNOWAIT waits for the exit without collecting it.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        os.kill(child.pid, 0)  # still there, as a zombie
        assert leases.stale(f"node-a:{child.pid}:abcdef", mine)
    finally:
        child.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not leases.stale(f"node-a:{sleeper.pid}:abcdef", mine)  # running: alive
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_restart_releases_only_earlier_incarnations_of_this_node(
    api: Api,
    services: Services,
    sink: Sink,
    writer: Any,  # noqa: F811
    delivery: Any,  # noqa: F811
) -> None:
    account = await make_account(api)
    await route_to(api, sink.port)
    node = leases.node_prefix(services.node_id)
    gone, sibling, elsewhere = (
        f"{node}{dead_pid()}:abcdef",
        f"{node}{os.getppid()}:abcdef",
        "another-node:1:abcdef",
    )
    msgs = {}
    store = open_backend(services.db, "test")
    try:
        for owner in (gone, sibling, elsewhere):
            msgs[owner] = await submit(writer, account, [f"{owner[-20:-7]}@example.net"])
            assert len(await store.claim(owner, 10, 300)) == 1
        assert sorted(await store.lease_owners(node)) == sorted([gone, sibling])
    finally:
        await store.close()
    await delivery()
    # The dead incarnation's recipient is delivered at once; the others keep their leases.
    (rcpt,) = msgs[gone].recipients
    await wait_states(services, msgs[gone].id, {rcpt: "delivered"})
    for owner in (sibling, elsewhere):
        rows = await recipients_of(services, msgs[owner].id)
        assert [(r.state, r.lease_owner) for r in rows.values()] == [("queued", owner)]
    assert len(sink.messages) == 1


async def test_leases_are_renewed_while_a_delivery_runs(
    api: Api,
    services: Services,
    sink: Sink,
    writer: Any,  # noqa: F811
    delivery: Any,  # noqa: F811
) -> None:
    """A delivery longer than the lease keeps its lease: nobody else claims it meanwhile, and
    it is not cut at the lease (delivery.attempt_timeout is its bound)."""
    services.settings.delivery.lease_seconds = 6
    services.settings.delivery.attempt_timeout = 120
    account = await make_account(api)
    await route_to(api, sink.port)
    sink.hold_data()
    msg = await submit(writer, account, ["slow@example.net"])
    await delivery()
    await wait_until(lambda: sink.in_data == 1, what="the delivery held at DATA")
    first = (await recipients_of(services, msg.id))["slow@example.net"].lease_until

    # Past the first lease's end: the renewed lease is still live, so nobody else can claim.
    await wait_until(lambda: time.time() > first + 0.5, timeout=30, what="the first lease over")
    row = (await recipients_of(services, msg.id))["slow@example.net"]
    assert row.lease_until > time.time() and row.lease_owner == services.node_id
    other = open_backend(services.db, "other")
    try:
        assert await other.claim("other-node:1:x", 10, 6) == []
    finally:
        await other.close()
    sink.release_data()
    await wait_states(services, msg.id, {"slow@example.net": "delivered"})
    assert sink.delivered_to("slow@example.net") == 1


async def test_webhook_outbox_lists_and_releases_an_owner(services: Services) -> None:
    store = open_store(services.db)
    try:
        assert await store.lease_owners("nobody:") == []
        assert await store.release_owner("nobody:1:x") == 0
    finally:
        await store.close()


async def test_webhook_worker_releases_an_earlier_incarnations_leases(
    tmp_path: Any,
    db_url: str,
    receiver: Any,  # noqa: F811
) -> None:
    """Deliveries of the outbox leased (for 300 s) by a process of this node that is gone are
    posted as soon as the webhook worker starts."""
    from sqlalchemy import update

    from relay import events
    from relay.store import schema as t
    from tests.relayfix import start_relay, stop_relay
    from tests.test_webhook_delivery import BASE_ENV, add_webhook, all_in_state, queue_events

    env = {**BASE_ENV, "RELAY_WEBHOOKS_ENABLED": "false"}
    running, session = await start_relay(tmp_path, db_url, **env)
    try:
        acct = await running.new_account()
        await add_webhook(running, acct, "delivery", receiver.url("/hook"))
        receiver.answer("/hook", 200)
        for _ in range(3):
            await queue_events(running, acct, [events.DELIVERED])
        services = running.relay.services
        assert services is not None
        pid = dead_pid()
        gone = f"{leases.node_prefix(services.node_id)}{pid}:abcdef/webhooks/{pid}/0123abcd"
        async with services.db.write() as conn:
            d = t.webhook_deliveries
            await conn.execute(update(d).values(lease_owner=gone, lease_until=time.time() + 300))
    finally:
        await stop_relay(running, session)

    running, session = await start_relay(tmp_path, db_url, **BASE_ENV)
    try:
        await wait_until(lambda: all_in_state(running, "delivered", 3), what="all three posted")
    finally:
        await stop_relay(running, session)

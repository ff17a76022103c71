"""Crash recovery on real processes: SIGKILL under load, restart, a dead node's work taken over.

Deliveries are held in flight at a slow sink (its DATA gate) when the relay is killed, so their
recipients are leased by processes that no longer exist. Every message the relay acknowledged
must be delivered again promptly, and only what was in flight may arrive twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.provision import wait_until
from tests.sink import Sink
from tests.test_e2e_process import Node, child_pids


def kill_hard(node: Node) -> None:
    """SIGKILL the node's whole process tree at once (children first, so none is restarted)."""
    for pid in child_pids(node.proc.pid):
        os.kill(pid, signal.SIGKILL)
    node.proc.kill()
    node.proc.wait(timeout=30)


def delivered(sink: Sink) -> Counter[str]:
    return Counter(r.lower() for m in sink.messages for r in m.rcpt_tos)


async def drop_held(sink: Sink) -> None:
    """The deliveries held at the gate died with the relay: let them end unrecorded, so that
    every message the sink records from now on was delivered again by a live process."""
    sink.data_reply = "451 4.3.0 connection lost"
    sink.release_data()
    await wait_until(lambda: sink.in_data == 0, timeout=30, what="held deliveries gone")
    sink.data_reply = None


async def send_all(node: Node, cred: dict[str, Any], rcpts: list[str]) -> None:
    for rcpt in rcpts:
        await asyncio.to_thread(node.send, cred, rcpt, "crash")


async def test_restart_after_sigkill_delivers_every_acknowledged_message_at_once(
    tmp_path: Path,
    nodes: list[Node],
    make_sink: Any,
    db_url: str,
) -> None:
    """kill -9 with deliveries in flight and more mail queued behind them; the restarted node
    frees the dead incarnation's leases at start. The lease here is 120 s: delivering within
    30 s shows the leases were reclaimed, not waited out."""
    sink = await make_sink()
    env = {
        "RELAY_DATABASE_URL": db_url,
        "RELAY_DELIVERY_LEASE_SECONDS": "120",
        "RELAY_DELIVERY_CONCURRENCY": "4",
        "RELAY_DELIVERY_BATCH_SIZE": "4",
    }
    data = tmp_path / "var"
    node = Node(tmp_path, data, **env)
    nodes.append(node)
    await asyncio.to_thread(node.wait_for, "READY=1")
    cred = await asyncio.to_thread(node.new_sender, "crash@example.com")
    await asyncio.to_thread(node.route_to, sink.port)

    sink.hold_data()
    rcpts = [f"c{i}@example.net" for i in range(16)]
    await send_all(node, cred, rcpts)  # each one acknowledged with 250
    await wait_until(lambda: sink.in_data == 4, timeout=30, what="4 deliveries in flight")
    in_flight = sink.in_data
    kill_hard(node)
    await drop_held(sink)

    again = Node(tmp_path, data, **env)
    nodes.append(again)
    await asyncio.to_thread(again.wait_for, "READY=1")
    started = time.monotonic()
    await sink.wait_for(lambda s: all(delivered(s)[r] >= 1 for r in rcpts), timeout=30)
    took = time.monotonic() - started
    counts = delivered(sink)
    twice = sum(n - 1 for n in counts.values())
    assert twice <= in_flight and max(counts.values()) <= 2, counts
    code, _, err = await asyncio.to_thread(again.stop)
    assert code == 0, err[-3000:]
    assert '"event": "reclaimed leases of an earlier incarnation"' in err, err[-3000:]
    assert took < 30
    print(f"restart: every acknowledged message delivered {took:.1f} s after READY")


@pytest.mark.postgres
async def test_survivor_delivers_a_dead_nodes_leased_mail(
    tmp_path: Path,
    nodes: list[Node],
    make_sink: Any,
    pg_url: str,
) -> None:
    """Two nodes share one PostgreSQL database; the one holding deliveries in flight dies for
    good. Its leases (8 s here; renewed every third while held) are no longer renewed: the
    survivor delivers once they expire, within 60 s."""
    sink = await make_sink()
    short = {"RELAY_DATABASE_URL": pg_url, "RELAY_DELIVERY_LEASE_SECONDS": "8"}
    a = Node(tmp_path, tmp_path / "a", RELAY_SERVER_NODE_ID="node-a", **short)
    nodes.append(a)
    await asyncio.to_thread(a.wait_for, "READY=1")
    cred = await asyncio.to_thread(a.new_sender, "two@example.com")
    await asyncio.to_thread(a.route_to, sink.port)

    sink.hold_data()
    rcpts = [f"n{i}@example.net" for i in range(8)]
    await send_all(a, cred, rcpts)
    await wait_until(lambda: sink.in_data == len(rcpts), timeout=30, what="all held by node a")

    # The survivor starts now, so node a holds every lease; node b only ever sees them leased.
    b = Node(tmp_path, tmp_path / "b", RELAY_SERVER_NODE_ID="node-b", **short)
    nodes.append(b)
    await asyncio.to_thread(b.wait_for, "READY=1")
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    try:
        owners = await conn.fetch(
            "SELECT lease_owner, count(*) FROM recipients WHERE lease_owner IS NOT NULL"
            " GROUP BY lease_owner"
        )
    finally:
        await conn.close()
    assert owners and all(o["lease_owner"].startswith("node-a:") for o in owners), owners

    killed = time.monotonic()
    kill_hard(a)
    await drop_held(sink)
    await sink.wait_for(lambda s: all(delivered(s)[r] >= 1 for r in rcpts), timeout=60)
    took = time.monotonic() - killed
    counts = delivered(sink)
    assert max(counts.values()) <= 2, counts
    code, _, err = await asyncio.to_thread(b.stop)
    assert code == 0, err[-3000:]
    assert took < 60
    print(f"survivor: the dead node's mail delivered {took:.1f} s after the kill")

"""The node's limits with its real process tree (`relay serve`, two SMTP processes): send
limits, failed logins and connection limits are the node's, whichever process serves a
session, and stay right when a worker process dies and is restarted; every process listens
with the configured backlog. (Each connection's process is found through /proc.)"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.smtp import replies
from tests.test_e2e_process import Node, child_pids
from tests.tools import need

TREE = {"RELAY_SMTP_PROCESSES": "2", "RELAY_DELIVERY_ENABLED": "false"}


def poll(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def holder(conn: socket.socket, pids: list[int]) -> int | None:
    """The process among ``pids`` that holds the server side of ``conn``."""
    client_port = conn.getsockname()[1]
    server_port = conn.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if (
            state == "01"  # ESTABLISHED (not an old TIME_WAIT of the same ports)
            and int(local.split(":")[1], 16) == server_port
            and int(remote.split(":")[1], 16) == client_port
        ):
            inode = fields[9]
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def connect(port: int, source: str = "127.0.0.1") -> tuple[socket.socket, str]:
    """A connection and its first line (the greeting, or the refusal)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    first = b""
    while not first.endswith(b"\r\n"):
        data = conn.recv(512)
        if not data:
            break
        first += data
    return conn, first.decode().strip()


def spread(node: Node, count: int) -> dict[int, list[smtplib.SMTP]]:
    """``count`` or more SMTP sessions, until both processes hold some: by process."""
    pids = [node.proc.pid, *child_pids(node.proc.pid, "smtp")]
    assert len(pids) == 2
    by_pid: dict[int, list[smtplib.SMTP]] = {pid: [] for pid in pids}
    # A worker that was just restarted may not accept yet: its sibling takes every connection
    # meanwhile. Connections beyond ``count`` in one process are closed at once, so waiting for
    # the other never runs into the per-address connection limit.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        client = smtplib.SMTP("127.0.0.1", node.smtp, timeout=30)
        assert client.sock is not None
        pid = holder(client.sock, pids)
        assert pid is not None
        if len(by_pid[pid]) >= count:
            client.quit()
            continue
        by_pid[pid].append(client)
        if sum(map(len, by_pid.values())) >= count and all(by_pid.values()):
            return by_pid
    raise AssertionError("the kernel never handed a connection to one of the processes")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """The embedded default, or PostgreSQL (a fresh migrated database)."""
    if request.param == "sqlite":
        return {}
    return {"RELAY_DATABASE_URL": str(request.getfixturevalue("pg_url"))}


def test_send_limit_and_auth_failures_are_the_nodes(
    tmp_path: Path,
    nodes: list[Node],
    database: dict[str, str],
) -> None:
    node = Node(
        tmp_path, tmp_path / "var", RELAY_SMTP_AUTH_MAX_FAILURES_PER_IP="4", **TREE, **database
    )
    nodes.append(node)
    node.wait_for("READY=1")
    cred = node.new_sender("limited@example.com")
    users = node.call("users.get", AdminAPIKey=node.admin_key)
    user_id = next(
        u["UserID"] for u in users["Users"] if u["EmailAddress"] == "limited@example.com"
    )
    node.call("user.update", AdminAPIKey=node.admin_key, UserID=user_id, SendLimitPerHour=3)

    # Sessions in both processes, used in turn: a limit of 3 lets exactly 3 through.
    by_pid = spread(node, 10)
    order = [c for pair in zip(*by_pid.values(), strict=False) for c in pair]
    order += [c for clients in by_pid.values() for c in clients if c not in order]
    outcomes = []
    for i, client in enumerate(order):
        client.login(cred["SMTPUsername"], cred["SMTPPassword"])
        rcpt = f"r{i}@example.net"
        try:
            client.sendmail("app@example.com", [rcpt], f"From: app@example.com\r\n\r\n{i}\r\n")
            outcomes.append("sent")
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[rcpt]
            assert f"{code} {text.decode()}" == replies.SEND_LIMIT
            outcomes.append("refused")
        client.quit()
    assert outcomes == ["sent"] * 3 + ["refused"] * (len(order) - 3), warnings(node)

    # The counts are the main process's: a worker killed and restarted changes nothing.
    (child,) = child_pids(node.proc.pid, "smtp")
    os.kill(child, signal.SIGKILL)
    poll(lambda: child_pids(node.proc.pid, "smtp") not in ([], [child]), "a new SMTP worker")
    for client in [c for clients in spread(node, 2).values() for c in clients]:
        client.login(cred["SMTPUsername"], cred["SMTPPassword"])
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("app@example.com", ["late@example.net"], "From: app@example.com\r\n")
        client.quit()

    # Wrong passwords in both processes add up: 4 from one address, then 421 for the 5th,
    # whichever process it reaches, without the password (right here) being checked.
    by_pid = spread(node, 6)
    order = [c for pair in zip(*by_pid.values(), strict=False) for c in pair]
    wrong = {**cred, "SMTPPassword": "wrong-password"}
    for client in order[:4]:
        client.ehlo()
        code, text = client.docmd("AUTH", "PLAIN " + plain(wrong))
        assert f"{code} {text.decode()}" == replies.AUTH_INVALID
        client.close()
    for client in order[4:6]:
        client.ehlo()
        code, text = client.docmd("AUTH", "PLAIN " + plain(cred))
        assert f"{code} {text.decode()}" == replies.AUTH_THROTTLED, warnings(node)
        client.close()
    # The owner from another address is not held back.
    with smtplib.SMTP("127.0.0.1", node.smtp, timeout=30, source_address=("127.0.0.2", 0)) as c:
        c.login(cred["SMTPUsername"], cred["SMTPPassword"])
    code, _, err = node.stop()
    assert code == 0, err[-3000:]


def warnings(node: Node) -> list[str]:
    """The node's warnings and errors so far (why a test failed, if it did)."""
    lines = node.err_path.read_text().splitlines()
    return [line for line in lines if '"warning"' in line or '"error"' in line]


def plain(cred: dict[str, Any]) -> str:
    import base64

    raw = f"\0{cred['SMTPUsername']}\0{cred['SMTPPassword']}".encode()
    return base64.b64encode(raw).decode()


def test_connection_limits_are_the_nodes_and_survive_a_worker_restart(
    tmp_path: Path,
    nodes: list[Node],
) -> None:
    need("ss (iproute2)", shutil.which("ss") is not None, "apt-get install iproute2")
    node = Node(
        tmp_path,
        tmp_path / "var",
        RELAY_SMTP_MAX_CONNECTIONS_PER_IP="10",
        RELAY_SMTP_MAX_CONNECTIONS="14",
        RELAY_SMTP_LISTEN_BACKLOG="777",
        **TREE,
    )
    nodes.append(node)
    node.wait_for("READY=1")
    pids = [node.proc.pid, *child_pids(node.proc.pid, "smtp")]

    # Every process listened with the configured backlog (ss shows it as Send-Q).
    for port in (node.smtp, node.smtps):
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert out[2] == "777", out

    # 30 connections from one address: 10 admitted, whichever process accepted them.
    conns = [connect(node.smtp) for _ in range(30)]
    admitted = [c for c, first in conns if first.startswith("220 ")]
    refused = [first for _, first in conns if not first.startswith("220 ")]
    assert len(admitted) == 10, warnings(node)
    assert refused == [replies.TOO_MANY_CONNECTIONS] * 20
    holders = {holder(c, pids) for c in admitted}
    # 4 more from another address fit the total of 14, the next does not.
    others = [connect(node.smtp, "127.0.0.2") for _ in range(5)]
    assert [first[:4] for _, first in others] == ["220 "] * 4 + ["421 "]
    for c, _ in others + [c for c in conns if c[0] not in admitted]:
        c.close()

    # A worker killed with the connections it held: the main process frees their slots.
    (child,) = child_pids(node.proc.pid, "smtp")
    kept = [c for c in admitted if holder(c, pids) == node.proc.pid]
    lost = [c for c in admitted if holder(c, pids) == child]
    os.kill(child, signal.SIGKILL)
    poll(lambda: child_pids(node.proc.pid, "smtp") not in ([], [child]), "a new SMTP worker")
    for c in lost:
        c.close()
    fresh = [connect(node.smtp) for _ in range(12)]
    assert sum(first.startswith("220 ") for _, first in fresh) == 10 - len(kept), (
        holders,
        len(kept),
        len(lost),
    )
    for c, _ in fresh:
        c.close()
    for c in kept:
        c.close()

    # Closed connections give their slots back.
    def all_ten_again() -> bool:
        again = [connect(node.smtp) for _ in range(10)]
        ok = all(first.startswith("220 ") for _, first in again)
        for c, _ in again:
            c.close()
        return ok

    poll(all_ten_again, "the slots back")
    code, _, err = node.stop()
    assert code == 0, err[-3000:]


async def test_bench_stall_measures_a_relay_process() -> None:
    """bench/stall.py (docs/benchmarks.md) runs: a small message through a real relay."""
    from bench.stall import run

    result = await run(1000, None)
    assert str(result["reply"]).startswith("250 2.0.0 Ok: queued as ")
    assert float(result["message_seconds"]) > 0 and float(result["longest_noop_seconds"]) > 0

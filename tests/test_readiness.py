"""/readyz says whether the node can accept mail: a cached write probe, not a write per
request; a database that cannot write (a full disk) makes it 503 until it can again."""

from __future__ import annotations

import json
import resource
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay import metrics
from relay.admin.app import AdminServer
from relay.health import StorageProbe, free_space_problem
from tests.relayfix import start_relay, stop_relay
from tests.test_e2e_process import Node


async def test_ready_from_a_cached_probe(tmp_path: Path, db_url: str) -> None:
    running, session = await start_relay(tmp_path, db_url)
    try:
        probe = running.relay.probe
        assert probe is not None and probe.runs >= 1
        assert metrics.STORAGE_UP._value.get() == 1
        runs, started = probe.runs, time.monotonic()
        for _ in range(30):
            status, body = await running.api.request("GET", "/readyz")
            assert (status, body) == (200, {"status": "ok"})
        # At most one probe per interval, whatever the number of requests.
        assert probe.runs - runs <= 1 + (time.monotonic() - started) / probe.interval
    finally:
        await stop_relay(running, session)


async def test_no_room_for_a_message_is_not_ready(tmp_path: Path) -> None:
    """Free space is checked where a SQLite database lives (a real statvfs, asking for more
    room than any disk has)."""
    import aiohttp

    from relay.services import Services
    from relay.store import migrate
    from tests.conftest import make_settings

    assert free_space_problem(tmp_path, 1) is None
    assert "bytes free" in (free_space_problem(tmp_path, 10**18) or "")
    services = await Services.create(make_settings(tmp_path))
    await migrate.upgrade(services.db)
    probe = StorageProbe(services, min_free_bytes=10**18)
    await probe.start()
    server = AdminServer(services, "127.0.0.1", 0, probe=probe)
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{server.port}/readyz") as resp,
        ):
            body = await resp.json()
        assert resp.status == 503 and body["failing"] == ["database"]
        assert "bytes free where the database lives" in body["reasons"]["database"]
    finally:
        await server.stop()
        await probe.stop()
        await services.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    started = Node(
        tmp_path,
        tmp_path / "var",
        RELAY_SMTP_PROCESSES="1",
        RELAY_DELIVERY_PROCESSES="0",
    )
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.wait(timeout=30)
    started.notify.close()


def _readyz(node: Node) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.admin}/readyz", timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _until(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_sqlite_that_cannot_write_is_not_ready(node: Node) -> None:
    """A full disk, as SQLite meets it: the process may not grow its files (RLIMIT_FSIZE set
    on the running relay), so every write fails until the limit is lifted."""
    node.wait_for("READY=1")
    cred = node.new_sender("owner@example.com")
    assert _readyz(node)[0] == 200
    wal = node.data_dir / "relay.sqlite3-wal"
    _soft, hard = resource.prlimit(node.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(node.proc.pid, resource.RLIMIT_FSIZE, (wal.stat().st_size, hard))
    try:
        _until(lambda: _readyz(node)[0] == 503, "readyz 503")
        _status, body = _readyz(node)
        assert body["failing"] == ["database"]
        assert body["reasons"]["database"].startswith("database write failed")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            node.send(cred, "someone@example.net")
        assert refused.value.smtp_code == 451
    finally:
        resource.prlimit(node.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
    _until(lambda: _readyz(node)[0] == 200, "readyz 200 again")
    node.send(cred, "someone@example.net")
    code, _out, err = node.stop()
    assert code == 0, err[-2000:]
    assert '"event": "storage cannot accept mail; /readyz answers 503"' in err
    assert '"event": "storage accepts writes again"' in err

"""Shared fixtures: real databases, real Redis, real servers on loopback.

PostgreSQL and Redis tests are required in CI (CI=true: a missing service fails them) and
skipped elsewhere with a message saying how to enable them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from hypothesis import settings as hypothesis_settings

from relay import config
from relay.node import running_node
from relay.services import Services
from relay.store import migrate
from relay.store.db import Database

if TYPE_CHECKING:
    from tests.test_e2e_process import Node

PG_ADMIN_URL = os.environ.get(
    "RELAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _redis_url() -> str:
    """Each pytest-xdist worker flushes a Redis database of its own: 15, 14, ..."""
    url = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    base, _, db = url.rpartition("/")
    if not worker.startswith("gw") or not db.isdigit():
        return url
    number = int(db) - int(worker[2:])
    if number < 0:  # never wrap around onto databases below the configured one
        raise RuntimeError(f"more pytest-xdist workers than Redis databases {db}..0")
    return f"{base}/{number}"


REDIS_URL = _redis_url()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ADMIN_KEY = "adm_test_0123456789abcdef"  # one value however conftest gets imported

# Property-based tests: the same examples on every CI run (derandomized, a seed-stable
# profile); fresh random ones elsewhere. No example database is written into the tree.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("dev", database=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(what: str, how: str) -> None:
    message = f"{what} not reachable; {how}"
    if IN_CI:
        pytest.fail(f"{message} (required in CI)")
    pytest.skip(message)


def _pg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _pg_exec(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


_pg_template: dict[str, Any] = {}


async def _pg_template_name() -> str:
    """A migrated template database, made once per test session."""
    if "name" in _pg_template:
        if _pg_template["name"] is None:
            raise OSError(_pg_template["error"])
        return str(_pg_template["name"])
    name = f"relay_tpl_{os.getpid()}"
    try:
        await _pg_exec(f'DROP DATABASE IF EXISTS "{name}"')
        await _pg_exec(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        _pg_template.update(name=None, error=str(exc))
        raise OSError(str(exc)) from exc
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    db = Database(f"{base}/{name}")
    await migrate.upgrade(db)
    await db.close()
    _pg_template["name"] = name
    return name


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    try:
        template = await _pg_template_name()
    except OSError as exc:
        _unavailable(
            f"PostgreSQL at {PG_ADMIN_URL} ({exc})",
            "start it (see README) or set RELAY_TEST_PG_URL",
        )
    name = f"relay_t_{uuid.uuid4().hex[:12]}"
    await _pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        await _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(client.ping(), 3)
        await client.flushdb()
    except Exception as exc:
        await client.aclose()
        _unavailable(
            f"Redis at {REDIS_URL} ({type(exc).__name__})",
            "start it (see README) or set RELAY_TEST_REDIS_URL",
        )
    yield REDIS_URL
    await client.flushdb()
    await client.aclose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per test session; each test gets a copy (as the
    PostgreSQL tests get a database made from a template): running every migration costs a
    few hundred milliseconds, a copy well under one."""
    path = tmp_path_factory.mktemp("sqlite-template") / "relay.sqlite3"

    async def make() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await migrate.upgrade(db)
        finally:
            await db.close()  # the last connection checkpoints the WAL into the file

    # A session fixture runs outside the tests' event loops: a loop of its own, in a thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, make()).result()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test once on SQLite and once on PostgreSQL, each on a fresh database already
    migrated to head (the relay's own upgrade at start then has nothing to do)."""
    if request.param == "sqlite":
        path = tmp_path / "relay.sqlite3"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    return str(request.getfixturevalue("pg_url"))


def make_settings(tmp_path: Path, db_url: str | None = None, **env: str) -> config.Settings:
    base = {
        "RELAY_DATA_DIR": str(tmp_path / "var"),
        "RELAY_ADMIN_API_KEY": ADMIN_KEY,
        "RELAY_SMTP_LISTEN": f"127.0.0.1:{free_port()}",
        "RELAY_SMTPS_LISTEN": f"127.0.0.1:{free_port()}",
        "RELAY_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "RELAY_TRACKING_LISTEN": f"127.0.0.1:{free_port()}",
        "RELAY_HOSTNAME": "relay.test",
        # Key generation is not what tests are about: 1024-bit keys take a tenth of the time
        # of the 2048-bit default (tests/test_dkim.py covers signing and verifying).
        "RELAY_DKIM_KEY_BITS": "1024",
        "RELAY_LOG_FORMAT": "console",
        # In-process delivery: tests look at the worker's objects (the process tree has its
        # own tests in test_e2e_process.py).
        "RELAY_DELIVERY_PROCESSES": "0",
        "RELAY_SMTP_PROCESSES": "1",
    }
    if db_url:
        base["RELAY_DATABASE_URL"] = db_url
    base.update(env)
    return config.load(None, env=base)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> config.Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
async def services(settings: config.Settings) -> AsyncIterator[Services]:
    """A node's storage, caches and bus, migrated and started (relay.node, nothing else)."""
    async with running_node(settings) as node:
        yield node.services


class Api:
    """A client of the admin app over real HTTP."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def call(self, command: str, *, admin: bool = False, **params: Any) -> dict[str, Any]:
        body = {"Command": command, **params}
        if admin:
            body["AdminAPIKey"] = ADMIN_KEY
        async with self.session.post(f"{self.base}/api.php", json=body) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
            data["_status"] = resp.status
            return data

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, f"{self.base}{path}", **kwargs) as resp:
            text = await resp.text()
            try:
                import json

                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


@pytest.fixture
async def api(services: Services) -> AsyncIterator[Api]:
    """The admin app served on a free loopback port, and a client for it."""
    from relay.admin.app import AdminServer

    server = AdminServer(services, "127.0.0.1", 0)
    await server.start()
    async with aiohttp.ClientSession() as session:
        yield Api(f"http://127.0.0.1:{server.port}", session)
    await server.stop()


# -- downstream SMTP sinks (tests/sink.py) ---------------------------------------------------


@pytest.fixture
async def make_sink(tmp_path: Path) -> AsyncIterator[Any]:
    """Factory: ``await make_sink(tls="starttls", auth=("u", "pw"))``; all stopped at the end."""
    from tests.sink import Sink

    sinks: list[Sink] = []

    async def factory(**kwargs: Any) -> Sink:
        kwargs.setdefault("cert_dir", tmp_path / f"sink-tls-{len(sinks)}")
        sink = Sink(**kwargs)
        await sink.start()
        sinks.append(sink)
        return sink

    yield factory
    for sink in sinks:
        await sink.stop()


@pytest.fixture
async def sink(make_sink: Any) -> Any:
    """One plain downstream SMTP server on a free loopback port."""
    return await make_sink()


# -- DNS server stub (tests/dnsstub.py) ------------------------------------------------------


@pytest.fixture
async def dns_stub() -> AsyncIterator[Any]:
    """A real DNS server on loopback (UDP and TCP); see tests/dnsstub.py.

    Point the relay at it with ``make_settings(..., RELAY_DNS_NAMESERVERS=dns_stub.nameserver)``.
    """
    from tests.dnsstub import DnsStub

    stub = DnsStub()
    await stub.start()
    yield stub
    await stub.stop()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Every relay process (tests/test_e2e_process.py ``Node``) a test starts; killed at teardown however the test ended."""
    started: list[Node] = []
    yield started
    for node in started:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(timeout=30)
        node.notify.close()

"""The relay as a user runs it: ``relay serve`` in a subprocess, set up through the admin API.

Configuration is the environment of CONTRACT.md only (a temporary RELAY_DATA_DIR, free
loopback ports, a generated RELAY_ADMIN_API_KEY); inherited RELAY_* variables are dropped so the
figures are those of the embedded default (SQLite, no Redis), or of PostgreSQL with
``database="postgres"``: a fresh database on the loopback server, ``relay migrate`` first.

Setup is what an operator would do over /api.php: a user, a sender domain set Enabled, SMTP
credentials for it, and a delivery server pointing at the sink assigned to user group 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bench.children import forget_child, spawn, tail, terminate

SENDER_DOMAIN = "bench.example.com"
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_loopback(host: str | None, what: str) -> None:
    """The benchmark talks to 127.0.0.0/8 or ::1 only (the developer guide's rule)."""
    try:
        ok = host is not None and (host == "localhost" or ipaddress.ip_address(host).is_loopback)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{what} must be on a loopback address, got {host!r}")


@dataclass
class Endpoint:
    """What the load generator needs to send to a target."""

    port: int
    sender_domain: str
    username: str = ""
    password: str = ""
    pid: int | None = None  # the process (tree) whose CPU time is reported, if any


class RelayInstance:
    def __init__(
        self,
        root: Path,
        sink_port: int,
        *,
        database: str = "sqlite",
        pg_admin_url: str = DEFAULT_PG_ADMIN_URL,
        sessions: int = 20,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.sink_port = sink_port
        self.database = database
        self.pg_admin_url = pg_admin_url
        self.sessions = sessions
        self.extra_env = extra_env or {}
        self.admin_key = "adm_bench_" + secrets.token_urlsafe(24)
        self.smtp_port = free_port()
        self.admin_port = free_port()
        self.tracking_port = free_port()
        self.log_path = root / "relay.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.pg_database: str | None = None
        # The account made by _setup, for benchmarks that change its options.
        self.api_key = ""
        self.domain_id = 0

    # -- environment -----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {
            "RELAY_DATA_DIR": str(self.root / "data"),
            "RELAY_SMTP_LISTEN": f"127.0.0.1:{self.smtp_port}",
            "RELAY_SMTPS_LISTEN": f"127.0.0.1:{free_port()}",
            "RELAY_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "RELAY_TRACKING_LISTEN": f"127.0.0.1:{self.tracking_port}",
            "RELAY_ADMIN_API_KEY": self.admin_key,
            "RELAY_HOSTNAME": "relay.bench.test",
            "RELAY_LOG_FORMAT": "json",
            # Nothing in this setup needs DNS; should anything try, it gets a closed loopback
            # port instead of the machine's resolver (the benchmark never leaves loopback).
            "RELAY_DNS_NAMESERVERS": f"127.0.0.1:{free_port()}",
            # The load opens `sessions` connections from 127.0.0.1.
            "RELAY_SMTP_MAX_CONNECTIONS_PER_IP": str(max(100, 2 * self.sessions)),
            "RELAY_SMTP_MAX_CONNECTIONS": str(max(2000, 2 * self.sessions)),
        }
        if self.pg_database:
            env["RELAY_DATABASE_URL"] = self._pg_url(self.pg_database, "postgresql+asyncpg")
        env.update(self.extra_env)
        return env

    def _pg_url(self, database: str, scheme: str) -> str:
        parts = urlsplit(self.pg_admin_url)
        return urlunsplit((scheme, parts.netloc, f"/{database}", "", ""))

    async def _pg_admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.pg_admin_url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Endpoint:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.database == "postgres":
            require_loopback(urlsplit(self.pg_admin_url).hostname, "--pg-admin-url")
            name = f"relay_bench_{uuid.uuid4().hex[:12]}"
            await self._pg_admin(f'CREATE DATABASE "{name}"')
            self.pg_database = name
            await self._relay_command("migrate")
        self.proc = await spawn(
            [sys.executable, "-m", "relay", "serve"],
            log_path=self.log_path,
            env=self._clean_env(),
            pipes=False,
        )
        await self._wait_ready(60)
        username, password = await self._setup()
        return Endpoint(
            port=self.smtp_port,
            sender_domain=SENDER_DOMAIN,
            username=username,
            password=password,
            pid=self.proc.pid,
        )

    def _clean_env(self) -> dict[str, str]:
        """Our variables over an environment without the caller's RELAY_* settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(self.env())
        return env

    async def _relay_command(self, command: str) -> None:
        proc = await spawn(
            [sys.executable, "-m", "relay", command],
            log_path=self.log_path,
            env=self._clean_env(),
            pipes=False,
        )
        rc = await proc.wait()
        await terminate(proc, 1)
        if rc != 0:
            raise RuntimeError(
                f"relay {command} exited with {rc} ({tail(self.log_path, 1)}):\n"
                f"{tail(self.log_path)}"
            )

    async def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(
                        f"relay serve exited with {self.proc.returncode} at startup "
                        f"({tail(self.log_path, 1)}):\n{tail(self.log_path)}"
                    )
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"relay not ready after {timeout:.0f} s:\n{tail(self.log_path)}"
                    )
                try:
                    await asyncio.wait_for(self.proc.wait(), 0.2)
                except TimeoutError:
                    pass

    async def _setup(self) -> tuple[str, str]:
        """The operator's steps over /api.php; returns the SMTP credentials."""
        async with aiohttp.ClientSession() as http:

            async def call(command: str, admin: bool = False, **params: Any) -> dict[str, Any]:
                body: dict[str, Any] = {"Command": command, **params}
                if admin:
                    body["AdminAPIKey"] = self.admin_key
                url = f"http://127.0.0.1:{self.admin_port}/api.php"
                async with http.post(url, json=body) as resp:
                    data: dict[str, Any] = await resp.json(content_type=None)
                if not data.get("Success"):
                    raise RuntimeError(
                        f"{command} failed: ErrorCode={data.get('ErrorCode')} "
                        f"{data.get('ErrorText') or data.get('Errors') or ''}"
                    )
                return data

            user = await call(
                "user.create",
                admin=True,
                EmailAddress=f"bench@{SENDER_DOMAIN}",
                Name="Benchmark",
                UserGroupID=1,
            )
            api_key = user["APIKey"]
            domain = await call("emailgateway.adddomain", APIKey=api_key, DomainName=SENDER_DOMAIN)
            domain_id = domain["NewSenderDomainID"]
            self.api_key, self.domain_id = api_key, int(domain_id)
            await call(
                "emailgateway.setdomainstatus", admin=True, DomainID=domain_id, Status="Enabled"
            )
            smtp = (await call("emailgateway.addsmtp", APIKey=api_key, DomainID=domain_id))["SMTP"]
            server = await call(
                "deliveryserver.create",
                admin=True,
                DeliveryServerName="benchmark sink",
                SendMethodSMTPHost="127.0.0.1",
                SendMethodSMTPPort=self.sink_port,
                SendMethodSMTPSecure="false",
                SendMethodSMTPTimeout=30,
                SendMethodSMTPAuth=False,
                DomainSettings_LinkTracking=f"track.{SENDER_DOMAIN}",
                DomainSettings_OpenTracking=f"open.{SENDER_DOMAIN}",
                DomainSettings_MFrom=f"bounce.{SENDER_DOMAIN}",
            )
            await call(
                "deliveryserver.assign",
                admin=True,
                DeliveryServerID=server["DeliveryServerID"],
                UserGroupID=1,
            )
        return str(smtp["SMTPUsername"]), str(smtp["SMTPPassword"])

    def kill(self) -> None:
        """SIGKILL the whole process tree at once (it runs in a session of its own): a crash."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def restart(self, timeout: float = 60) -> None:
        """``relay serve`` again on the same data, database and ports, once the old is gone."""
        if self.proc is not None:
            await self.proc.wait()
            forget_child(self.proc)
        self.proc = await spawn(
            [sys.executable, "-m", "relay", "serve"],
            log_path=self.log_path,
            env=self._clean_env(),
            pipes=False,
        )
        await self._wait_ready(timeout)

    def died(self) -> str:
        """Why the relay is gone, or "" while it runs."""
        if self.proc is None or self.proc.returncode is None:
            return ""
        return f"relay serve exited with {self.proc.returncode} ({tail(self.log_path, 1)})"

    async def stop(self) -> None:
        """SIGTERM (the relay drains and exits), then drop the PostgreSQL database."""
        if self.proc is not None:
            await terminate(self.proc, 45)
            self.proc = None
        if self.pg_database:
            name, self.pg_database = self.pg_database, None
            await self._pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""The systemd units: valid (systemd-analyze verify), ordered as documented, and the relay
runs under their own sandbox (environment, working directory, system call filter) as a
non-root user."""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit_sandbox import SYSTEM_PYTHON

UNITS = Path(__file__).parent.parent / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path: Path) -> None:
    relay_bin = Path(sys.executable).parent / "relay"
    paths = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace("/opt/relay/venv/bin/relay", str(relay_bin))
        dest = tmp_path / unit.name
        dest.write_text(text)
        paths.append(str(dest))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in proc.stderr.splitlines() if "relay" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_service_is_notify_and_migrations_come_first() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNITS / "relay.service")
    assert unit["Service"]["Type"] == "notify"
    assert "relay-migrate.service" in unit["Unit"]["Requires"]
    assert "relay-migrate.service" in unit["Unit"]["After"]
    assert "serve" in unit["Service"]["ExecStart"]


def test_units_reload_and_document_only_what_exists() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNITS / "relay.service")
    assert "kill -HUP $MAINPID" in unit["Service"]["ExecReload"]
    for path in sorted(UNITS.glob("*.service")):
        for line in path.read_text().splitlines():
            if line.startswith("Documentation="):
                for uri in line.split("=", 1)[1].split():
                    assert not uri.startswith("file://") or Path(uri[7:]).exists(), uri


# -- the relay under the units' own sandbox ---------------------------------------------------


class SandboxedRelay:
    """`relay serve` as relay.service runs it: the unit's environment, working directory and
    system call filter, as user nobody (when the tests run as root), READY=1 over a notify
    socket."""

    def __init__(self, base: Path, sink_port: int) -> None:
        from tests.conftest import free_port
        from tests.unit_sandbox import importable_path, sandboxed, unit_environment

        self.base = base
        self.data = base / "state"
        _state_directory(self.data)
        self.smtp, self.smtps, self.admin = free_port(), free_port(), free_port()
        self.tracking = free_port()
        self.sink_port = sink_port
        self.notify_path = base / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify_path.chmod(0o777)
        self.notify.settimeout(90)
        env, cwd = unit_environment("relay.service", self.data)
        env.update(
            PATH="/usr/bin:/bin",
            PYTHONPATH=importable_path(),
            NOTIFY_SOCKET=str(self.notify_path),
            RELAY_SMTP_LISTEN=f"127.0.0.1:{self.smtp}",
            RELAY_SMTPS_LISTEN=f"127.0.0.1:{self.smtps}",
            RELAY_ADMIN_LISTEN=f"127.0.0.1:{self.admin}",
            RELAY_TRACKING_LISTEN=f"127.0.0.1:{self.tracking}",
            RELAY_HOSTNAME="relay.test",
            # The defaults matter here: delivery in a child process at nice 10, two SMTP
            # processes.
            RELAY_DELIVERY_PROCESSES="1",
            RELAY_SMTP_PROCESSES="2",
        )
        self.log_path = base / "relay.log"
        command = sandboxed("relay.service", base, [SYSTEM_PYTHON, "-m", "relay", "serve"])
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        try:
            while self.notify.recv(1024) != b"READY=1":
                pass
        except TimeoutError:
            raise AssertionError(f"no READY=1: {self.log()[-4000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def call(self, command: str, **params: Any) -> dict[str, Any]:
        body = json.dumps({"Command": command, **params}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/api.php", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            data: dict[str, Any] = json.load(resp)
        assert data.get("Success"), data
        return data

    def children(self) -> list[int]:
        text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(p) for p in text.split()]


def _state_directory(path: Path) -> None:
    """What StateDirectory= and StateDirectoryMode=0700 make: the service user's own dir."""
    path.mkdir(mode=0o700)
    if os.getuid() == 0:
        entry = pwd.getpwnam("nobody")
        os.chown(path, entry.pw_uid, entry.pw_gid)


@pytest.fixture
def sandbox_base() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path is private to root)."""
    from tests.unit_sandbox import importable_path, need_sandbox_tools

    need_sandbox_tools()
    base = Path(tempfile.mkdtemp(prefix="relay-unit-"))
    base.chmod(0o755)
    if os.getuid() == 0:
        probe = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             SYSTEM_PYTHON, "-c", "import relay.cli, aiosmtpd, seccomp"],
            env={"PYTHONPATH": importable_path(), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if probe.returncode != 0:
            shutil.rmtree(base)
            pytest.skip(f"user nobody cannot read this checkout: {probe.stderr[-300:]}")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _nice(pid: int) -> int:
    # /proc/PID/stat: field 19 is the nice value; the command name (field 2) may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


async def test_relay_runs_under_the_units_syscall_filter_as_non_root(sandbox_base: Path) -> None:
    from tests.provision import wait_until
    from tests.sink import Sink
    from tests.unit_sandbox import sandboxed

    # The filter is real: a call it leaves out (@resources' sched_setaffinity) kills.
    control = subprocess.run(
        sandboxed("relay.service", sandbox_base,
                  [SYSTEM_PYTHON, "-c", "import os; os.sched_setaffinity(0, {0})"]),
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert control.returncode == -signal.SIGSYS, control

    sink = await Sink().start()
    relay = SandboxedRelay(sandbox_base, sink.port)
    try:
        await asyncio.to_thread(relay.wait_ready)
        key = (relay.data / "admin_api_key").read_text().strip()
        cred = await asyncio.to_thread(_provision, relay, key)
        await asyncio.to_thread(_send, relay.smtp, cred, "first@example.net")
        await sink.wait_for(count=1, timeout=60)

        pids = [relay.proc.pid, *relay.children()]
        assert len(pids) == 3  # main, one more SMTP process, one delivery process
        assert all(_uid(pid) != 0 for pid in pids) or os.getuid() != 0
        base = os.nice(0)  # the test may itself run niced
        assert sorted(_nice(pid) for pid in pids) == [base, base, base + 10]

        # SIGHUP reloads in every process and stops none of them.
        relay.proc.send_signal(signal.SIGHUP)
        await wait_until(
            lambda: relay.log().count("configuration reloaded") >= 3,
            timeout=60,
            what="three processes reloaded",
        )
        await asyncio.to_thread(_send, relay.smtp, cred, "second@example.net")
        await sink.wait_for(count=2, timeout=60)
        assert relay.proc.poll() is None and sorted(relay.children()) == sorted(pids[1:])

        relay.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(relay.proc.wait, 90)
        log = relay.log()
        assert code == 0, log[-4000:]
        # No process of the tree was killed by the filter (SIGSYS) or died for any reason.
        assert "worker process died" not in log, log[-4000:]
    finally:
        if relay.proc.poll() is None:
            relay.proc.kill()
            relay.proc.wait()
        relay.notify.close()
        await sink.stop()


def _provision(relay: SandboxedRelay, key: str) -> dict[str, Any]:
    user = relay.call("user.create", AdminAPIKey=key, EmailAddress="unit@example.com")
    dom = relay.call("emailgateway.adddomain", APIKey=user["APIKey"], DomainName="example.com")
    relay.call(
        "emailgateway.setdomainstatus",
        AdminAPIKey=key,
        DomainID=dom["NewSenderDomainID"],
        Status="Enabled",
    )
    server = relay.call(
        "deliveryserver.create", AdminAPIKey=key, DeliveryServerName="sink",
        SendMethodSMTPHost="127.0.0.1", SendMethodSMTPPort=relay.sink_port,
        SendMethodSMTPSecure="false", SendMethodSMTPTimeout=10, SendMethodSMTPAuth=False,
        DomainSettings_LinkTracking="t.x.com", DomainSettings_OpenTracking="o.x.com",
        DomainSettings_MFrom="b.x.com",
    )  # fmt: skip
    relay.call(
        "deliveryserver.assign",
        AdminAPIKey=key,
        DeliveryServerID=server["DeliveryServerID"],
        UserGroupID=1,
    )
    smtp: dict[str, Any] = relay.call(
        "emailgateway.addsmtp", APIKey=user["APIKey"], DomainID=dom["NewSenderDomainID"]
    )["SMTP"]
    return smtp


def _send(port: int, cred: dict[str, Any], rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(cred["SMTPUsername"], cred["SMTPPassword"])
        client.sendmail(
            "app@example.com",
            [rcpt],
            f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: unit\r\n\r\nhi\r\n".encode(),
        )


def test_migrate_unit_runs_as_shipped(sandbox_base: Path) -> None:
    """relay-migrate.service on the embedded default: its environment puts the database in the
    state directory, and `relay migrate` runs under its filter as a non-root user."""
    from tests.unit_sandbox import importable_path, sandboxed, unit_environment

    state = sandbox_base / "state"
    _state_directory(state)
    env, cwd = unit_environment("relay-migrate.service", state)
    env.update(PATH="/usr/bin:/bin", PYTHONPATH=importable_path())
    proc = subprocess.run(
        sandboxed("relay-migrate.service", sandbox_base, [SYSTEM_PYTHON, "-m", "relay", "migrate"]),
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "schema at revision" in proc.stdout
    assert (state / "relay.sqlite3").exists()
    assert stat.S_IMODE((state / "relay.sqlite3").stat().st_mode) == 0o600

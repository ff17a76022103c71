"""`relay serve` as a user starts it: a real process on the embedded default."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).parent.parent


class Node:
    """One `relay serve` process, with a systemd-style notify socket to see READY/STOPPING."""

    def __init__(self, tmp_path: Path, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.smtp, self.smtps, self.admin = free_port(), free_port(), free_port()
        self.notify_path = str(tmp_path / f"notify-{self.smtp}.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(60)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "CI"}
        full_env.update(
            RELAY_DATA_DIR=str(data_dir),
            RELAY_SMTP_LISTEN=f"127.0.0.1:{self.smtp}",
            RELAY_SMTPS_LISTEN=f"127.0.0.1:{self.smtps}",
            RELAY_ADMIN_LISTEN=f"127.0.0.1:{self.admin}",
            RELAY_TRACKING_LISTEN=f"127.0.0.1:{free_port()}",
            RELAY_HOSTNAME="relay.test",
            RELAY_LOG_FORMAT="json",
            RELAY_LOG_LEVEL="debug",
            RELAY_DKIM_KEY_BITS="1024",  # as tests/conftest.py make_settings
            NOTIFY_SOCKET=self.notify_path,
            **env,
        )
        # Files, not pipes: a chatty process must never block on a full pipe.
        self.out_path = tmp_path / f"stdout-{self.smtp}.txt"
        self.err_path = tmp_path / f"stderr-{self.smtp}.txt"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve"],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=err,
                text=True,
            )
        self.states: list[str] = []

    def wait_for(self, state: str) -> None:
        while state not in self.states:
            try:
                self.states.append(self.notify.recv(1024).decode())
            except TimeoutError:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"no {state}; stdout={self.out_path.read_text()!r} "
                    f"stderr={self.err_path.read_text()[-3000:]!r}"
                ) from None

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=90)
        self.wait_for("STOPPING=1")
        self.notify.close()
        return self.proc.returncode, self.out_path.read_text(), self.err_path.read_text()

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin_api_key").read_text().strip()

    def new_sender(self, email: str, domain: str = "example.com") -> dict[str, Any]:
        """A user with an Enabled domain; its SMTP credential (SMTPUsername, SMTPPassword)."""
        key = self.admin_key
        user = self.call("user.create", AdminAPIKey=key, EmailAddress=email)
        dom = self.call("emailgateway.adddomain", APIKey=user["APIKey"], DomainName=domain)
        domain_id = dom["NewSenderDomainID"]
        self.call(
            "emailgateway.setdomainstatus", AdminAPIKey=key, DomainID=domain_id, Status="Enabled"
        )
        smtp: dict[str, Any] = self.call(
            "emailgateway.addsmtp", APIKey=user["APIKey"], DomainID=domain_id
        )["SMTP"]
        return smtp

    def route_to(self, port: int) -> None:
        """Send group 1's mail to a plain SMTP server on loopback."""
        key = self.admin_key
        server = self.call(
            "deliveryserver.create", AdminAPIKey=key, DeliveryServerName="sink",
            SendMethodSMTPHost="127.0.0.1", SendMethodSMTPPort=port, SendMethodSMTPSecure="false",
            SendMethodSMTPTimeout=10, SendMethodSMTPAuth=False,
            DomainSettings_LinkTracking="t.x.com", DomainSettings_OpenTracking="o.x.com",
            DomainSettings_MFrom="b.x.com",
        )  # fmt: skip
        self.call(
            "deliveryserver.assign",
            AdminAPIKey=key,
            DeliveryServerID=server["DeliveryServerID"],
            UserGroupID=1,
        )

    def send(self, cred: dict[str, Any], rcpt: str, subject: str = "e2e") -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=30) as c:
            c.login(cred["SMTPUsername"], cred["SMTPPassword"])
            c.sendmail(
                "app@example.com",
                [rcpt],
                f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nhi\r\n".encode(),
            )

    def call(self, command: str, **params: Any) -> dict[str, Any]:
        body = json.dumps({"Command": command, **params}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/api.php", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            data: dict[str, Any] = json.load(resp)
            return data


def send_over_starttls(port: int, username: str, password: str) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=ctx)
        client.login(username, password)
        client.sendmail(
            "app@example.com",
            ["r@example.net"],
            b"From: app@example.com\r\nSubject: e2e\r\n\r\nhello\r\n",
        )


def test_embedded_default_first_start_restart_and_stop(tmp_path: Path, nodes: list[Node]) -> None:
    data = tmp_path / "var"
    node = Node(tmp_path, data)
    nodes.append(node)
    node.wait_for("READY=1")
    key_file = data / "admin_api_key"
    admin_key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (data / "tls" / "cert.pem").exists() and (data / "relay.sqlite3").exists()

    user = node.call("user.create", AdminAPIKey=admin_key, EmailAddress="e2e@example.com")
    domain = node.call("emailgateway.adddomain", APIKey=user["APIKey"], DomainName="example.com")
    node.call(
        "emailgateway.setdomainstatus",
        AdminAPIKey=admin_key,
        DomainID=domain["NewSenderDomainID"],
        Status="Enabled",
    )
    smtp = node.call(
        "emailgateway.addsmtp", APIKey=user["APIKey"], DomainID=domain["NewSenderDomainID"]
    )
    username, password = smtp["SMTP"]["SMTPUsername"], smtp["SMTP"]["SMTPPassword"]
    send_over_starttls(node.smtp, username, password)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        send_over_starttls(node.smtp, username, "Wrong-Secret-Password-XYZ")
    # A refused sender, and an admin change to the queue (the log lines of issue 11's tracing).
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", node.smtp, timeout=30) as client:
        client.starttls(context=ctx)
        client.login(username, password)
        assert client.mail("someone@elsewhere.example")[0] == 553
    held = node.call("queue.hold", AdminAPIKey=admin_key, All=True)
    assert held["Success"] is True

    code, out, err = node.stop()
    assert code == 0, err[-2000:]
    # The generated key is printed once, on first start, and nothing else secret ever is.
    assert out.count(admin_key) == 1 and "Generated admin API key" in out
    for secret in (password, "Wrong-Secret-Password-XYZ", user["APIKey"], admin_key):
        assert secret not in err, "a secret reached the log"
    assert '"event": "auth failed"' in err and username in err
    # Every kind of line that says what happened to a message or who changed what was written
    # (and checked above for secrets): accepted, refused, admin change, queue held.
    for kind in ("accepted", "refused", "admin change", "queue held"):
        assert f'"event": "{kind}"' in err, kind

    again = Node(tmp_path, data)
    nodes.append(again)
    again.wait_for("READY=1")
    # State survived the restart: the same keys work and the domain is still Enabled.
    got = again.call(
        "emailgateway.getdomain", APIKey=user["APIKey"], DomainID=domain["NewSenderDomainID"]
    )
    assert got["Domain"]["Status"] == "Enabled"
    send_over_starttls(again.smtp, username, password)
    code, out, _ = again.stop()
    assert code == 0 and "Generated admin API key" not in out and admin_key not in out


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_DATA_DIR=str(tmp_path), RELAY_SMTP_LISTEN="not-an-address")
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "smtp.listen" in proc.stderr


def test_postgres_refuses_to_serve_an_old_schema(tmp_path: Path, pg_url: str) -> None:
    import asyncio

    import asyncpg

    async def wipe() -> None:
        conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
        await conn.execute("DROP TABLE alembic_version")
        await conn.close()

    asyncio.run(wipe())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATA_DIR=str(tmp_path),
        RELAY_DATABASE_URL=pg_url,
        RELAY_SMTP_LISTEN=f"127.0.0.1:{free_port()}",
        RELAY_SMTPS_LISTEN=f"127.0.0.1:{free_port()}",
        RELAY_ADMIN_LISTEN=f"127.0.0.1:{free_port()}",
        RELAY_TRACKING_LISTEN=f"127.0.0.1:{free_port()}",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "relay migrate" in proc.stderr, proc.stderr[-2000:]


def child_pids(parent: int, role: str = "") -> list[int]:
    """The parent's worker processes (of one role: --role smtp | delivery)."""
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    if not role:
        return pids
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except (FileNotFoundError, ProcessLookupError):
            # Exited since pgrep saw it (e.g. the one just killed): gone, or still being torn
            # down, when reading its cmdline fails with ESRCH.
            continue
        if f"--role\0{role}\0" in cmdline:
            found.append(pid)
    return found


async def test_process_tree_delivers_and_keeps_caches_in_sync(
    tmp_path: Path, nodes: list[Node], make_sink: Any
) -> None:
    """Delivery runs in a child process: it is woken by commits, learns route changes made in
    the parent, its hard-bounce suppressions reach the parent's SMTP checks at once, and a
    child that dies is replaced."""
    import asyncio

    from tests.provision import wait_until

    sink = await make_sink()
    sink.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
    node = Node(
        tmp_path,
        tmp_path / "var",
        RELAY_DELIVERY_RETRY_BASE="0.5",
        RELAY_DELIVERY_RETRY_MAX_INTERVAL="1",
        RELAY_DELIVERY_POLL_INTERVAL="30",
    )
    nodes.append(node)
    await asyncio.to_thread(node.wait_for, "READY=1")
    assert len(child_pids(node.proc.pid, "delivery")) == 1
    assert len(child_pids(node.proc.pid, "smtp")) == 1
    cred = await asyncio.to_thread(node.new_sender, "t@example.com")

    def send(rcpt: str) -> None:
        node.send(cred, rcpt, "tree")

    # No route yet: the child defers (and caches "no servers" for group 1).
    await asyncio.to_thread(send, "first@example.net")

    def deferred() -> bool:
        for line in node.err_path.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "deferred" and event.get("rcpt") == "first@example.net":
                    return True
        return False

    await wait_until(deferred, what="the first attempt deferred (no route yet)")
    assert sink.messages == []
    # The route is added in the parent; the child hears of it and retries within its backoff.
    await asyncio.to_thread(node.route_to, sink.port)
    await sink.wait_for(lambda s: s.delivered_to("first@example.net") == 1)
    # Commits wake the child (poll_interval is 30 s here).
    for i in range(10):
        await asyncio.to_thread(send, f"r{i}@example.net")
    await sink.wait_for(lambda s: all(s.delivered_to(f"r{i}@example.net") == 1 for i in range(10)))

    # A hard bounce in the child suppresses the address; the parent's RCPT check knows at once.
    await asyncio.to_thread(send, "gone@example.net")

    def suppressed() -> bool:
        try:
            send("gone@example.net")
        except smtplib.SMTPRecipientsRefused as exc:
            return exc.recipients["gone@example.net"][0] == 550
        return False

    await wait_until(lambda: asyncio.to_thread(suppressed), timeout=30, what="suppression")

    # A child killed hard is replaced, and mail flows again.
    (child,) = child_pids(node.proc.pid, "delivery")
    os.kill(child, signal.SIGKILL)
    await wait_until(
        lambda: child_pids(node.proc.pid, "delivery") not in ([], [child]),
        timeout=60,
        what="a new delivery process",
    )
    await asyncio.to_thread(send, "after@example.net")
    await sink.wait_for(lambda s: s.delivered_to("after@example.net") == 1, timeout=60)

    code, _, err = await asyncio.to_thread(node.stop)
    assert code == 0, err[-3000:]
    assert child_pids(node.proc.pid) == []


def test_metrics_cover_every_process(tmp_path: Path, nodes: list[Node]) -> None:
    """/metrics of a node with a delivery process shows the child's metrics too."""
    node = Node(tmp_path, tmp_path / "var")
    nodes.append(node)
    node.wait_for("READY=1")
    key = (tmp_path / "var" / "admin_api_key").read_text().strip()
    node.call("user.create", AdminAPIKey=key, EmailAddress="m@example.com")
    with urllib.request.urlopen(f"http://127.0.0.1:{node.admin}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    # Set only by the delivery worker, which runs in the child process.
    assert "relay_delivery_worker_up 1.0" in text, text[:3000]
    assert 'relay_api_requests_total{command="user.create",error_code="0",status="200"} 1.0' in text
    code, _, err = node.stop()
    assert code == 0, err[-2000:]


async def test_smtp_worker_process_serves_on_the_shared_listener(
    tmp_path: Path, nodes: list[Node], make_sink: Any
) -> None:
    """With the main process frozen (SIGSTOP), the SMTP worker process accepts, authenticates,
    signs and commits on its own; its commit reaches delivery once the main process runs."""
    import asyncio

    sink = await make_sink()
    node = Node(tmp_path, tmp_path / "var")
    nodes.append(node)
    await asyncio.to_thread(node.wait_for, "READY=1")
    cred = node.new_sender("w@example.com")
    node.route_to(sink.port)

    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        # Only the SMTP worker process can answer now.
        await asyncio.to_thread(node.send, cred, "w@example.net", "worker")
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    await sink.wait_for(lambda s: s.delivered_to("w@example.net") == 1, timeout=60)
    assert b"DKIM-Signature:" in sink.messages[0].data
    code, _, err = await asyncio.to_thread(node.stop)
    assert code == 0, err[-3000:]

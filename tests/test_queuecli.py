"""`relay queue ...` as an operator runs it: a separate process against a running `relay serve`
(its SMTP and delivery worker processes included), on SQLite and PostgreSQL; and the log lines
that tell one message's story, from both processes, with no secret in them."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.smtp import replies
from tests.provision import wait_until
from tests.sink import Sink
from tests.test_e2e_process import ROOT, Node

PASSWORD_SHOWN = "Wrong-Secret-Password-QUEUE"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The node's database settings: the embedded default, or a fresh PostgreSQL database.
    PostgreSQL also proves the wake-up: its poll interval is far longer than any wait here, so
    a retried or released recipient is delivered only because of the NOTIFY."""
    if request.param == "sqlite":
        yield {"RELAY_DELIVERY_POLL_INTERVAL": "1"}
    else:
        yield {
            "RELAY_DATABASE_URL": request.getfixturevalue("pg_url"),
            "RELAY_DELIVERY_POLL_INTERVAL": "600",
        }


class Cli:
    """`relay queue ...` in its own process, configured like the node; every run's stderr (its
    log) is kept."""

    def __init__(self, node: Node, database: dict[str, str]) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env.update(
            RELAY_DATA_DIR=str(node.data_dir),
            RELAY_LOG_FORMAT="json",
            RELAY_LOG_LEVEL="debug",
            **{k: v for k, v in database.items() if k == "RELAY_DATABASE_URL"},
        )
        self.logs: list[str] = []
        self.outputs: list[str] = []

    async def __call__(self, *args: str, code: int = 0) -> str:
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "relay", "queue", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.logs.append(proc.stderr)
        self.outputs.append(proc.stdout)
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr[-2000:])
        return proc.stdout

    async def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(await self(*args, "--json", code=code))

    async def listed(self, *args: str) -> dict[str, dict[str, Any]]:
        """``list --json``: recipient -> item."""
        return {i["Recipient"]: i for i in await self.json("list", *args)}


def send(node: Node, cred: dict[str, Any], rcpt: str, subject: str) -> str:
    """One message over SMTP; its queue id from the 250 reply."""
    body = f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", node.smtp, timeout=30) as c:
        c.login(cred["SMTPUsername"], cred["SMTPPassword"])
        c.mail("app@example.com")
        c.rcpt(rcpt)
        code, reply = c.data(body.encode())
    assert code == 250, reply
    m = re.search(r"queued as (\S+)", reply.decode())
    assert m is not None, reply
    return m.group(1)


def new_sender(node: Node) -> tuple[str, dict[str, Any]]:
    """A user with an Enabled example.com: its APIKey and SMTP credential."""
    user = node.call("user.create", AdminAPIKey=node.admin_key, EmailAddress="q@example.com")
    dom = node.call("emailgateway.adddomain", APIKey=user["APIKey"], DomainName="example.com")
    node.call(
        "emailgateway.setdomainstatus",
        AdminAPIKey=node.admin_key,
        DomainID=dom["NewSenderDomainID"],
        Status="Enabled",
    )
    smtp = node.call(
        "emailgateway.addsmtp", APIKey=user["APIKey"], DomainID=dom["NewSenderDomainID"]
    )
    return user["APIKey"], smtp["SMTP"]


def refused_sender(node: Node, cred: dict[str, Any]) -> int:
    with smtplib.SMTP("127.0.0.1", node.smtp, timeout=30) as c:
        c.login(cred["SMTPUsername"], cred["SMTPPassword"])
        code, _ = c.mail("someone@not-mine.example")
    return code


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


async def test_queue_commands_against_a_running_relay(
    tmp_path: Path, nodes: list[Node], make_sink: Any, database: dict[str, str]
) -> None:
    sink: Sink = await make_sink()
    sink.rcpt_replies["slow@example.net"] = "451 4.7.1 Greylisted, try again later"
    node = Node(
        tmp_path,
        tmp_path / "var",
        RELAY_DELIVERY_RETRY_BASE="3600",
        RELAY_DELIVERY_RETRY_MAX_INTERVAL="3600",
        **database,
    )
    nodes.append(node)
    await asyncio.to_thread(node.wait_for, "READY=1")
    user_key, cred = await asyncio.to_thread(new_sender, node)
    await asyncio.to_thread(node.route_to, sink.port)
    cli = Cli(node, database)

    # -- list: a deferred recipient, with its reply; filters -------------------------------
    slow = await asyncio.to_thread(send, node, cred, "slow@example.net", "queue test")

    async def deferred() -> bool:
        item = (await cli.listed("--state", "deferred")).get("slow@example.net")
        return item is not None and item["Attempts"] == 1

    await wait_until(deferred, timeout=60, interval=0.5, what="the first deferral")
    text = await cli("list")
    (line,) = [ln for ln in text.splitlines() if slow in ln]
    assert "deferred" in line and "slow@example.net" in line and "451 4.7.1 Greylisted" in line
    assert text.splitlines()[0].startswith("QUEUE ID")
    assert text.splitlines()[-1] == "-- 1 recipient: 1 deferred"
    item = (
        await cli.listed("--sender-domain", "example.com", "--recipient-domain", "example.net")
    )["slow@example.net"]
    assert (item["QueueID"], item["State"], item["LastCode"]) == (slow, "deferred", 451)
    assert await cli.listed("--state", "held") == {}
    assert await cli.listed("--older-than", "1h") == {}
    assert (
        await cli("list", "--sender-domain", "other.example")
    ).strip() == "No recipient matches."

    # -- show: headers, recipients, every event ----------------------------------------------
    shown = await cli("show", slow)
    assert f"Queue ID:     {slow}" in shown
    assert "    Subject: queue test" in shown and "    DKIM-Signature: " in shown
    assert re.search(r"slow@example\.net\s+deferred\s+1 attempt\s+next ", shown)
    assert re.search(r"accepted\s+slow@example.net", shown)
    assert re.search(r"deferred\s+slow@example.net\s+451 4.7.1 Greylisted.*server=sink", shown)
    (msg,) = (await cli.json("show", slow))["Messages"]
    assert msg["MessageID"] == slow and [e["event"] for e in msg["Events"]] == [
        "accepted", "deferred"
    ]  # fmt: skip

    # -- hold, retry (nothing while held), release: delivered --------------------------------
    assert (await cli("hold", slow)).strip() == "hold: 1 recipient of 1 message held"
    assert (await cli.listed())["slow@example.net"]["State"] == "held"
    del sink.rcpt_replies["slow@example.net"]
    assert (await cli.json("retry", slow))["Recipients"] == 0
    assert (await cli("release", slow)).strip() == "release: 1 recipient of 1 message released"
    await sink.wait_for(lambda s: s.delivered_to("slow@example.net") == 1, timeout=60)

    # -- retry of everything deferred: due now, delivered -----------------------------------
    sink.rcpt_replies["later@example.net"] = "451 4.7.1 Greylisted, try again later"
    later = await asyncio.to_thread(send, node, cred, "later@example.net", "retry test")
    await wait_until(
        lambda: sink.rcpt_seen["later@example.net"] >= 1, timeout=60, what="the first attempt"
    )

    async def later_deferred() -> bool:
        return (await cli.listed()).get("later@example.net", {}).get("State") == "deferred"

    await wait_until(later_deferred, timeout=60, interval=0.5, what="the deferral")
    del sink.rcpt_replies["later@example.net"]
    retried = await cli.json("retry", "--all", "--state", "deferred")
    assert (retried["Recipients"], retried["QueueIDs"]) == (1, [later])
    await sink.wait_for(lambda s: s.delivered_to("later@example.net") == 1, timeout=60)

    # -- delete: never under a running delivery ---------------------------------------------
    sink.hold_data()
    busy = await asyncio.to_thread(send, node, cred, "busy@example.net", "delete test")
    await wait_until(lambda: sink.in_data == 1, timeout=60, what="a delivery in flight")
    assert (await cli.listed())["busy@example.net"]["InDelivery"] is True
    said = (await cli("delete", busy)).strip()
    assert said == (
        "delete: 0 recipients of 0 messages deleted; 1 recipient being delivered right now: "
        "held instead, run delete again once the attempt is over"
    )
    # The attempt goes on and ends deferred: held, so never tried again...
    sink.data_reply = "451 4.3.0 try again later"
    sink.release_data()

    async def settled() -> bool:
        item = (await cli.listed()).get("busy@example.net", {})
        return item.get("State") == "held" and item.get("InDelivery") is False

    await wait_until(settled, timeout=60, interval=0.5, what="the attempt's end")
    # ... and deleted now.
    gone = await cli.json("delete", busy, "no-such-id", code=1)
    assert (gone["Recipients"], gone["InDelivery"], gone["Unknown"]) == (1, 0, ["no-such-id"])
    (msg,) = (await cli.json("show", busy))["Messages"]
    assert msg["Recipients"][0]["State"] == "failed" and msg["Headers"] == []
    me = pwd.getpwuid(os.getuid()).pw_name
    assert msg["Events"][-1]["event"] == "failed"
    assert msg["Events"][-1]["data"] == {"reason": "deleted", "by": f"cli:{me}"}
    assert (await cli("list")).strip() == "The queue is empty."

    # -- a refusal, an admin change with its author ------------------------------------------
    assert await asyncio.to_thread(refused_sender, node, cred) == 553
    await asyncio.to_thread(
        node.call, "emailgateway.addsuppression", AdminAPIKey=node.admin_key,
        UserID=1, EmailAddress="blocked@example.net",
    )  # fmt: skip
    with pytest.raises(smtplib.SMTPAuthenticationError):
        await asyncio.to_thread(node.send, {**cred, "SMTPPassword": PASSWORD_SHOWN}, "x@y.z")

    code, _, err = await asyncio.to_thread(node.stop)
    assert code == 0, err[-3000:]
    # Works with the relay stopped too.
    assert (await cli("list")).strip() == "The queue is empty."

    # -- the story of `slow` in the logs: grep its queue id ---------------------------------
    node_lines = json_lines(err)
    cli_lines = [line for log in cli.logs for line in json_lines(log)]
    story = sorted(
        (line for line in node_lines + cli_lines if slow in json.dumps(line)),
        key=lambda line: line["timestamp"],
    )
    events = [line["event"] for line in story]
    assert events == [
        "accepted", "deferred", "queue held", "queue retried", "queue released", "delivered"
    ], story  # fmt: skip
    accepted, first, held, retried_held, released, delivered = story
    assert (accepted["queue_id"], accepted["mail_from"], accepted["recipients"]) == (
        slow, "app@example.com", 1
    )  # fmt: skip
    assert accepted["source"] == "smtp" and accepted["client_ip"] == "127.0.0.1"
    assert (first["rcpt"], first["server"], first["code"], first["attempt"]) == (
        "slow@example.net", "sink", 451, 1
    )  # fmt: skip
    assert first["reply"].startswith("451 4.7.1 Greylisted") and "next_attempt_at" in first
    assert (held["by"], held["via"], held["recipients"]) == (f"cli:{me}", "cli", 1)
    assert (retried_held["recipients"], retried_held["queue_ids"]) == (0, [slow])
    assert (released["queue_id"], released["recipients"]) == (slow, 1)
    assert (delivered["server"], delivered["code"], delivered["attempt"]) == ("sink", 250, 2)
    assert delivered["reply"].startswith("250")
    # The delete's lines, the refusal and the admin's change.
    assert [line["event"] for line in cli_lines if line.get("queue_id") == busy] == [
        "queue deleted", "queue deleted"
    ]  # fmt: skip
    (refused,) = [line for line in node_lines if line["event"] == "refused"]
    assert (refused["stage"], refused["reason"], refused["mail_from"]) == (
        "mail", "sender_not_owned", "someone@not-mine.example"
    )  # fmt: skip
    assert refused["reply"] == replies.SENDER_NOT_OWNED
    assert refused["username"] == cred["SMTPUsername"]
    changes = [line for line in node_lines if line["event"] == "admin change"]
    by_command = {line["command"]: line for line in changes}
    assert by_command["emailgateway.addsuppression"]["by"] == "admin"
    assert by_command["emailgateway.addsuppression"]["email"] == "blocked@example.net"
    assert by_command["emailgateway.addsmtp"]["by"].startswith("user:")
    assert by_command["deliveryserver.create"]["new_deliveryserverid"] >= 1
    # No secret in any of it: the node's log (at debug level), the CLI's output and log.
    everything = err + "".join(cli.logs) + "".join(cli.outputs)
    for secret in (cred["SMTPPassword"], PASSWORD_SHOWN, node.admin_key, user_key):
        assert secret not in everything, "a secret reached the log"


def test_usage_and_database_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATA_DIR"] = str(tmp_path / "var")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relay", "queue", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    fresh = run("list")
    assert fresh.returncode == 2
    assert fresh.stderr.strip().splitlines()[-1] == (
        "relay queue list: the database has no queue yet: start the relay, or run `relay migrate`"
    )
    migrated = subprocess.run(
        [sys.executable, "-m", "relay", "migrate"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    nothing = run("delete")
    assert nothing.returncode == 2
    assert "name queue ids, or select with --all and/or filters" in nothing.stderr
    both = run("hold", "some-id", "--all")
    assert both.returncode == 2 and "not both" in both.stderr
    age = run("list", "--older-than", "soon")
    assert age.returncode == 2 and "not an age: 'soon'" in age.stderr
    assert "Traceback" not in fresh.stderr + nothing.stderr + both.stderr + age.stderr

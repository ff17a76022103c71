"""The benchmark's own parts: the load generator, the counting sink, the verdicts, Postfix's config.

The benchmark is only worth its figures if the load is what it claims and the sink counts
right; these tests check that on loopback with real servers, and assert counts, never speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import postfix
from bench.loadgen import RCPT_DOMAIN, Config, Result, build_message, open_sessions, run_sessions
from bench.relay_bench import (
    Bench,
    RunResult,
    Target,
    parse_args,
    report,
    split_sessions,
    verify,
)
from bench.relay_target import require_loopback
from bench.sink import CountingHandler, Tally, start_server


def config(port: int, **kw: Any) -> Config:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "sessions": 3,
        "duration": 0.3,
        "prefix": "t1",
        "sender_domain": "bench.example.com",
    }
    base.update(kw)
    return Config(**base)


@pytest.mark.parametrize("size", [512, 2048, 10_000])
def test_messages_have_the_exact_size_a_unique_id_and_no_dot_lines(size: int) -> None:
    a, b, c = build_message(config(25, size=size), 7)
    first = a + b"0000000001" + b + b"0000000001" + c
    second = a + b"0000000002" + b + b"0000000002" + c
    assert len(first) == len(second) == size
    assert b"\r\nX-Bench-Id: t1.00007.0000000001\r\n" in first
    assert b"Message-ID: <t1.00007.0000000002@bench.example.com>" in second
    assert first.endswith(b"\r\n")
    assert not any(line.startswith(b".") for line in first.split(b"\r\n"))
    assert first.count(b"\r\nFrom: ") + first.startswith(b"From: ") == 1


def test_sink_counts_each_message_and_recipient_once_for_the_current_run_only() -> None:
    handler = CountingHandler()
    handler.tally = Tally(prefix="run2")
    a, b, c = build_message(config(25, prefix="run2"), 1)
    msg = a + b"0000000001" + b + b"0000000001" + c
    handler.count(msg, ["x@example.net", "y@example.net"])
    handler.count(msg, ["x@example.net"])  # redelivered: a duplicate
    handler.count(b"DKIM-Signature: v=1\r\n" + msg.replace(b"0000000001", b"0000000002"), ["x@a"])
    old_a, old_b, old_c = build_message(config(25, prefix="run1"), 1)
    handler.count(old_a + b"0000000001" + old_b + b"0000000001" + old_c, ["x@example.net"])
    handler.count(b"Subject: no id\r\n\r\nbody\r\n", ["x@example.net"])
    t = handler.tally.public()
    assert (t["messages"], t["distinct"], t["deliveries"]) == (3, 2, 3)
    assert (t["duplicates"], t["dkim_signed"], t["strays"]) == (1, 1, 2)
    assert "ids" not in t and "pairs" not in t


async def test_every_message_the_load_sees_accepted_reaches_the_sink_exactly_once() -> None:
    handler = CountingHandler()
    handler.tally = Tally(prefix="t1")
    server = await start_server(handler)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = config(port, recipients=2, username="u", password="p")
        result = Result()
        sessions, errors = await open_sessions(cfg, result)
        assert errors == []
        await run_sessions(sessions, cfg, result)
    finally:
        server.close()
        await server.wait_closed()
    t = handler.tally
    assert result.accepted > 0
    assert result.failures == {}
    assert t.distinct == t.messages == result.accepted
    assert t.deliveries == result.accepted_rcpts == 2 * result.accepted
    assert t.duplicates == t.strays == 0
    assert result.start < result.end


async def test_rejections_are_counted_by_stage_and_code_not_as_accepted(make_sink: Any) -> None:
    sink = await make_sink()
    sink.rcpt_replies[f"rcpt1@{RCPT_DOMAIN}"] = "550 5.1.1 no such user"
    cfg = config(sink.port, sessions=1, recipients=2)
    result = Result()
    sessions, errors = await open_sessions(cfg, result)
    assert errors == []
    await run_sessions(sessions, cfg, result)
    assert result.accepted > 0
    assert result.accepted_rcpts == result.accepted  # only rcpt0 of each message
    assert result.failures == {"RCPT 550": result.accepted}
    assert len(sink.messages) == result.accepted
    assert sink.delivered_to(f"rcpt1@{RCPT_DOMAIN}") == 0


async def test_sessions_that_cannot_open_are_reported() -> None:
    from tests.conftest import free_port

    _, errors = await open_sessions(config(free_port(), sessions=2), Result())
    assert len(errors) == 2 and "ConnectionRefusedError" in errors[0]


def test_sessions_are_split_over_the_load_processes() -> None:
    assert split_sessions(20, 1) == [(0, 20)]
    assert split_sessions(21, 2) == [(0, 11), (11, 10)]
    assert split_sessions(2, 5) == [(0, 1), (1, 1)]


def run(**kw: Any) -> RunResult:
    base: dict[str, Any] = {"target": "relay-sqlite", "label": "relay", "rep": 1, "prefix": "p"}
    base.update(kw)
    return RunResult(**base)


def test_verify_flags_every_way_a_run_can_be_wrong() -> None:
    relay = Target("relay-sqlite", "relay (SQLite)", is_relay=True)
    good = run(accepted=10, accepted_rcpts=10, delivered=10, deliveries=10, dkim_signed=10)
    verify(good, relay)
    assert good.ok

    bad = run(
        accepted=10,
        accepted_rcpts=10,
        delivered=8,
        deliveries=8,
        missing=2,
        duplicates=1,
        dkim_signed=7,
        failures={"DATA 451": 3},
    )
    verify(bad, relay)
    text = " | ".join(bad.problems)
    assert "3 failed commands" in text
    assert "2 accepted recipients not delivered" in text
    assert "1 duplicate deliveries" in text
    assert "1 relayed messages without DKIM-Signature" in text

    extra = run(accepted=5, accepted_rcpts=5, delivered=6, deliveries=6)
    verify(extra, Target("postfix", "Postfix"))
    assert extra.problems == ["1 deliveries of unacknowledged messages"]

    nothing = run()
    verify(nothing, relay)
    assert nothing.problems == ["no message accepted"]


def test_report_shows_medians_ratios_and_why_a_target_did_not_run() -> None:
    bench = Bench(parse_args(["--repeat", "3"]))
    bench.targets = [
        Target("bare", "bare aiosmtpd sink"),
        Target("postfix", "Postfix", skipped="postfix is not installed"),
        Target("relay-sqlite", "relay (SQLite)", is_relay=True),
    ]
    for rate in (100.0, 300.0, 200.0):
        bench.runs.append(run(target="bare", accepted_rate=rate * 4, delivered_rate=rate * 4))
        problems = ["2 duplicate deliveries"] if rate == 300.0 else []
        bench.runs.append(run(accepted_rate=rate, delivered_rate=rate / 2, problems=problems))
    text = report(bench)
    bare = next(line for line in text.splitlines() if line.startswith("bare"))
    relay = next(line for line in text.splitlines() if line.startswith("relay"))
    postfix_line = next(line for line in text.splitlines() if line.startswith("Postfix"))
    assert bare.split()[3:5] == ["800.0", "800.0"]
    assert relay.split()[2:4] == ["200.0", "100.0"]
    assert relay.split()[-3:] == ["0.25", "0.12", "2/3"]  # one run failed verification
    assert "skipped: postfix is not installed" in postfix_line


def test_arguments_are_validated() -> None:
    args = parse_args(["--targets", "bare,relay", "--database", "sqlite,postgres"])
    assert args.targets == ["bare", "relay"] and args.database == ["sqlite", "postgres"]
    assert parse_args(["--relay-env", "RELAY_DKIM_SIGN_THREADS=4"]).relay_env == [
        ("RELAY_DKIM_SIGN_THREADS", "4")
    ]
    for bad in (["--targets", "exim"], ["--database", "mysql"], ["--relay-env", "X=1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_postgres_must_be_on_loopback() -> None:
    require_loopback("127.0.0.1", "x")
    require_loopback("::1", "x")
    require_loopback("localhost", "x")
    for host in ("10.0.0.5", "db.example.com", None):
        with pytest.raises(ValueError):
            require_loopback(host, "x")


def test_postfix_instance_is_private_loopback_only_and_relays_everything_to_the_sink(
    tmp_path: Path,
) -> None:
    main = postfix.main_cf(tmp_path, 2599, "3.7.11")
    settings = dict(
        line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
        for line in main.splitlines()
        if line and not line.startswith("#")
    )
    assert settings["relayhost"] == "[127.0.0.1]:2599"
    assert settings["inet_interfaces"] == "127.0.0.1"
    assert settings["mynetworks"] == "127.0.0.0/8"
    assert settings["queue_directory"] == f"{tmp_path}/queue"
    assert settings["mydestination"] == ""
    assert settings["content_filter"] == "" and settings["smtpd_milters"] == ""
    assert settings["smtp_dns_support_level"] == "disabled"
    assert settings["compatibility_level"] == "3.6"
    assert postfix.compatibility_level("3.5.18") == "2"
    master = postfix.master_cf(2600)
    assert master.splitlines()[1].split()[:2] == ["127.0.0.1:2600", "inet"]
    # Only one inet service, and nothing chrooted (the queue is not under a chroot).
    services = [line.split() for line in master.splitlines()[1:] if line.strip()]
    assert [s[0] for s in services if s[1] == "inet"] == ["127.0.0.1:2600"]
    assert all(s[4] == "n" for s in services)


def test_defaults_are_the_documented_load() -> None:
    args = parse_args([])
    assert (args.sessions, args.recipients, args.size, args.repeat) == (20, 1, 2048, 3)
    assert args.targets == ["bare", "postfix", "relay"] and args.database == ["sqlite"]


def test_the_driver_runs_the_bare_target_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sink and load in their own processes, the table, the JSON; a short run, counts only."""
    import json

    from bench.relay_bench import main

    status = main(
        ["--targets", "bare", "--duration", "0.5", "--repeat", "2", "--results-dir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    (path,) = tmp_path.glob("relay-bench-*.json")
    data = json.loads(path.read_text())
    assert [r["rep"] for r in data["runs"]] == [1, 2]
    for r in data["runs"]:
        assert r["ok"] and r["problems"] == []
        assert r["accepted"] > 0 and r["delivered"] == r["deliveries"] == r["accepted"]
    assert data["medians"]["bare"]["runs"] == 2
    assert "bare aiosmtpd sink" in out and "2/2" in out

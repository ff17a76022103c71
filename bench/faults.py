"""Fault injection: SIGKILL the relay under load, restart it, and count what became of the mail.

    python -m bench.faults --database sqlite --duration 20
    python -m bench.faults --database postgres --duration 20 --after 10

One run: ``relay serve`` (bench/relay_target.py, delivering to the counting sink bench/sink.py)
takes load from bench/loadgen.py sessions for ``--duration`` seconds; then its whole process
tree gets SIGKILL while the sessions are still sending and deliveries are in flight. It is
started again at once on the same data; ``--after`` seconds of load follow the restart. The
load generator reports the X-Bench-Id of every message it got a ``250`` for (acknowledged),
the sink every (id, recipient) pair it received, so the report says exactly:

- acknowledged: before the kill, and after the restart;
- delivered, missing (acknowledged, never delivered) and duplicates (a pair received again:
  at-least-once delivery repeats what was in flight at the kill);
- unacknowledged but delivered: committed before the kill, its ``250`` lost with the process
  (the client would send it again; not an error of the relay);
- not yet delivered at the kill: the backlog the restarted relay has to work off (queued,
  or leased by the dead delivery process);
- down: from the kill to ready again; recovery: from ready until every message acknowledged
  before the kill has been delivered (the target is 30 s), which includes working off that
  backlog next to the new load.

Everything stays on loopback; a PostgreSQL run creates and drops its own database. Exits 1 when
a message is missing or recovery took longer than ``--target``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.children import Child
from bench.loadgen import RCPT_DOMAIN
from bench.relay_target import DEFAULT_PG_ADMIN_URL, Endpoint, RelayInstance

POLL = 0.25


@dataclass
class Report:
    database: str
    sessions: int
    acknowledged_before_kill: int = 0
    acknowledged_after_restart: int = 0
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    unacknowledged_delivered: int = 0
    backlog_at_kill: int = 0  # acknowledged before the kill, not delivered when it came
    down_seconds: float = 0.0
    recovery_seconds: float | None = None  # None: not recovered within --recover-timeout
    drained: bool = False
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def acknowledged(self) -> int:
        return self.acknowledged_before_kill + self.acknowledged_after_restart


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    p.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL, help="loopback only")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load before the kill")
    p.add_argument("--after", type=float, default=10.0, help="seconds of load after the restart")
    p.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions")
    p.add_argument("--size", type=int, default=2048, help="message size in bytes")
    p.add_argument("--target", type=float, default=30.0, help="recovery target (seconds)")
    p.add_argument("--recover-timeout", type=float, default=120.0)
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--keep", action="store_true", help="keep the relay's data and log")
    return p.parse_args(argv)


async def start_load(
    endpoint: Endpoint, prefix: str, args: argparse.Namespace, first: int, duration: float,
    log_dir: Path,
) -> Child:  # fmt: skip
    child = await Child.start(f"loadgen-{first}", "bench.loadgen", log_dir=log_dir)
    config = {
        "host": "127.0.0.1",
        "port": endpoint.port,
        "sessions": args.sessions,
        "first_session": first,  # distinct ids in each phase
        "duration": duration,
        "prefix": prefix,
        "sender_domain": endpoint.sender_domain,
        "size": args.size,
        "username": endpoint.username,
        "password": endpoint.password,
        "track": True,
    }
    await child.send(json.dumps(config))
    ready = await child.read(60)
    if ready.get("errors"):
        raise RuntimeError(f"sessions could not open: {ready['errors']}")
    await child.send("go")
    return child


async def pairs(sink: Child) -> set[str]:
    return set((await sink.ask("pairs", timeout=60))["pairs"])


def expected(acked: list[str]) -> set[str]:
    return {f"{bench_id} rcpt0@{RCPT_DOMAIN}" for bench_id in acked}


async def run(args: argparse.Namespace, tmp: Path) -> Report:
    report = Report(args.database, args.sessions)
    sink = await Child.start("sink", "bench.sink", log_dir=tmp)
    relay: RelayInstance | None = None
    try:
        sink_port = (await sink.read(30))["ready"]
        relay = RelayInstance(
            tmp / "relay",
            sink_port,
            database=args.database,
            pg_admin_url=args.pg_admin_url,
            sessions=args.sessions,
        )
        endpoint = await relay.start()
        prefix = f"faults-{secrets.token_hex(3)}"
        await sink.ask(f"reset {prefix}")

        # Phase 1: load, and SIGKILL in the middle of it. The sessions go on trying for a
        # moment (refused connections) and then report what was acknowledged: all before the kill.
        load = await start_load(endpoint, prefix, args, 0, args.duration + 1.0, tmp)
        await asyncio.sleep(args.duration)
        relay.kill()
        killed = time.monotonic()
        at_kill = await pairs(sink)
        first = await load.read(args.duration + 120)
        await load.stop(timeout=1)
        before = expected(first["acked"])
        report.acknowledged_before_kill = len(before)
        report.backlog_at_kill = len(before - at_kill)

        await relay.restart()
        ready = time.monotonic()
        report.down_seconds = ready - killed

        # Phase 2: new load while the relay recovers.
        second_load = None
        if args.after > 0:
            second_load = await start_load(endpoint, prefix, args, args.sessions, args.after, tmp)
        deadline = ready + args.recover_timeout
        while time.monotonic() < deadline:
            if before <= await pairs(sink):
                report.recovery_seconds = time.monotonic() - ready
                break
            await asyncio.sleep(POLL)
        phases = [first]
        if second_load is not None:
            phases.append(await second_load.read(args.after + 120))
            await second_load.stop(timeout=1)
        for phase in phases:
            for key, count in phase["failures"].items():
                report.failures[key] = report.failures.get(key, 0) + count
        after = expected(phases[1]["acked"]) if len(phases) > 1 else set()
        report.acknowledged_after_restart = len(after)
        acked = before | after

        # Drain: everything acknowledged, before and after the kill.
        deadline = time.monotonic() + args.drain_timeout
        got = await pairs(sink)
        while not acked <= got and time.monotonic() < deadline:
            await asyncio.sleep(POLL * 4)
            got = await pairs(sink)
        stats = await sink.ask("stats")
        report.drained = acked <= got
        report.delivered = len(acked & got)
        report.missing = len(acked - got)
        report.unacknowledged_delivered = len(got - acked)
        report.duplicates = int(stats["duplicates"])
    finally:
        if relay is not None:
            await relay.stop()
        await sink.stop()
    return report


def render(report: Report, args: argparse.Namespace) -> str:
    rec = report.recovery_seconds
    lines = [
        f"fault injection: SIGKILL under load, {report.database}, {report.sessions} sessions, "
        f"{args.duration:.0f} s load before the kill, {args.after:.0f} s after the restart",
        f"  acknowledged        {report.acknowledged} "
        f"({report.acknowledged_before_kill} before the kill, "
        f"{report.acknowledged_after_restart} after the restart)",
        f"  not yet delivered at the kill {report.backlog_at_kill}",
        f"  delivered           {report.delivered}",
        f"  missing             {report.missing}",
        f"  duplicates          {report.duplicates}",
        f"  unacknowledged but delivered (250 lost with the process) "
        f"{report.unacknowledged_delivered}",
        f"  down (kill -> ready) {report.down_seconds:.1f} s",
        "  recovery (ready -> every message acknowledged before the kill delivered) "
        + (f"{rec:.1f} s" if rec is not None else f"not within {args.recover_timeout:.0f} s"),
    ]
    if report.failures:
        top = sorted(report.failures.items(), key=lambda kv: -kv[1])[:5]
        lines.append("  client-side failures (the kill): " + ", ".join(f"{k}: {v}" for k, v in top))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp_dir = tempfile.mkdtemp(prefix="relay-faults-")
    report = asyncio.run(run(args, Path(tmp_dir)))
    print(render(report, args))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if not args.keep:
        import shutil

        with contextlib.suppress(OSError):
            shutil.rmtree(tmp_dir)
    else:
        print(f"  data and logs kept in {tmp_dir}")
    rec = report.recovery_seconds
    ok = report.missing == 0 and rec is not None and rec <= args.target
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

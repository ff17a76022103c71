"""Throughput of the relay against a bare Python SMTP sink and Postfix, side by side.

    python -m bench.relay_bench [--sessions 20] [--duration 10] [--repeat 3] [--database sqlite]

One sink (bench/sink.py) receives everything. Each target gets the same load (bench/loadgen.py:
N sessions sending 2 KB messages for a fixed time): the bare sink directly (the Python ceiling),
a private Postfix instance relaying to the sink (bench/postfix.py; skipped when Postfix is not
installed), and ``relay serve`` delivering to the sink (bench/relay_target.py), on SQLite and
optionally PostgreSQL. Runs are interleaved (target A, B, C, then again) so load from other users
of the machine spreads over all targets. Each run reports accepted msgs/s (250 replies to the
data, over the load window) and delivered msgs/s (distinct messages at the sink, from the start
of the load to the last delivery, waiting until every accepted message arrived or a deadline).
Medians of the runs go in a table with ratios, and every raw figure to bench/results/*.json.

Every run is verified: each accepted recipient must reach the sink exactly once, no command may
fail, and messages through the relay must carry a DKIM signature. The exit status is 1 when a
run fails verification or a requested target cannot start, 0 otherwise. docs/benchmarks.md has
the details and how to install Postfix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import postfix
from bench.children import ROOT, Child, ChildError, forget, on_exit
from bench.loadgen import loop_factory
from bench.relay_target import (
    DEFAULT_PG_ADMIN_URL,
    SENDER_DOMAIN,
    Endpoint,
    RelayInstance,
    free_port,
)

TARGETS = ("bare", "postfix", "relay")
DATABASES = ("sqlite", "postgres")
RESULTS_DIR = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    key: str  # "bare", "postfix", "relay-sqlite", "relay-postgres"
    label: str
    endpoint: Endpoint | None = None
    skipped: str = ""  # why it does not run (not a failure: Postfix not installed)
    error: str = ""  # why it failed to start (a failure)
    is_relay: bool = False
    queued: Callable[[], dict[str, int]] | None = None  # leftover queue, for the report
    died: Callable[[], str] | None = None  # "" while the target's processes are alive


@dataclass
class RunResult:
    target: str
    label: str
    rep: int
    prefix: str
    accepted: int = 0
    accepted_rcpts: int = 0
    window: float = 0.0  # seconds from "go" to the last reply of the load
    accepted_rate: float = 0.0
    delivered: int = 0  # distinct messages at the sink
    deliveries: int = 0  # distinct (message, recipient) pairs at the sink
    delivered_window: float = 0.0  # seconds from "go" to the last delivery
    delivered_rate: float = 0.0
    drained: bool = False
    missing: int = 0
    duplicates: int = 0
    dkim_signed: int = 0
    strays: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    loadgen_cpu: list[float] = field(default_factory=list)  # % of one core, per process
    sink_cpu: float = 0.0
    target_cpu: float | None = None  # the relay's or Postfix's processes, % of one core
    machine_busy: float = 0.0  # % of all cores over the load window
    leftover_queue: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Bench:
    args: argparse.Namespace
    targets: list[Target] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)
    started: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    load_before: tuple[float, ...] = field(default_factory=os.getloadavg)
    interrupted: bool = False


# -- measurements ----------------------------------------------------------------------------


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        values = [float(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def _stat(pid: int | str) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu(pid: int | None) -> float | None:
    """CPU seconds of a process, its threads and its descendants (live and reaped).

    Postfix is a tree of processes (master, smtpd, cleanup, qmgr, smtp...): live ones are read
    directly, exited ones are in their parent's cutime/cstime once reaped, so the sum stays
    consistent between two readings. None if the process is gone.
    """
    if pid is None:
        return None
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            f = _stat(entry)
        except (OSError, IndexError):
            continue
        children.setdefault(int(f[1]), []).append(int(entry))  # f[1]: ppid
        ticks[int(entry)] = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    if pid not in ticks:
        return None
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += ticks.get(p, 0)
        todo.extend(children.get(p, []))
    return total / CLK_TCK


def pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 1) if whole > 0 else 0.0


# -- one run ---------------------------------------------------------------------------------


def split_sessions(sessions: int, procs: int) -> list[tuple[int, int]]:
    """(first session number, count) for each load process."""
    procs = max(1, min(procs, sessions))
    base, extra = divmod(sessions, procs)
    out, first = [], 0
    for i in range(procs):
        n = base + (1 if i < extra else 0)
        out.append((first, n))
        first += n
    return out


async def run_once(bench: Bench, target: Target, rep: int, sink: Child, log_dir: Path) -> RunResult:
    args = bench.args
    endpoint = target.endpoint
    assert endpoint is not None
    prefix = f"{target.key}-{rep}-{secrets.token_hex(3)}"
    result = RunResult(target=target.key, label=target.label, rep=rep, prefix=prefix)
    await sink.ask(f"reset {prefix}")
    loadgens: list[Child] = []
    try:
        for i, (first, count) in enumerate(split_sessions(args.sessions, args.procs)):
            child = await Child.start(f"loadgen-{prefix}-{i}", "bench.loadgen", log_dir=log_dir)
            loadgens.append(child)
            config = {
                "host": "127.0.0.1",
                "port": endpoint.port,
                "sessions": count,
                "first_session": first,
                "duration": args.duration,
                "prefix": prefix,
                "sender_domain": endpoint.sender_domain,
                "recipients": args.recipients,
                "size": args.size,
                "username": endpoint.username,
                "password": endpoint.password,
                # A text/html body with links (bench/tracking.py's end-to-end part).
                "html": getattr(args, "html", False),
            }
            await child.send(json.dumps(config))
        for child in loadgens:
            ready = await child.read(60)
            if ready.get("errors"):
                result.problems.append(f"sessions could not open: {ready['errors']}")
        if result.problems:
            return result

        busy0, total0 = machine_cpu()
        sink0 = await sink.ask("stats")
        target0 = tree_cpu(endpoint.pid)
        for child in loadgens:
            await child.send("go")
        loads = [await child.read(args.duration + 120) for child in loadgens]
        busy1, total1 = machine_cpu()
        sink1 = await sink.ask("stats")
        target1 = tree_cpu(endpoint.pid)
    finally:
        for child in loadgens:
            # Done ones have exited already; an interrupted one is not worth waiting for.
            await child.stop(timeout=1)

    start = min(load["start"] for load in loads)
    end = max(load["end"] for load in loads)
    result.window = end - start
    result.accepted = sum(load["accepted"] for load in loads)
    result.accepted_rcpts = sum(load["accepted_rcpts"] for load in loads)
    result.accepted_rate = result.accepted / result.window if result.window > 0 else 0.0
    for load in loads:
        for key, count in load["failures"].items():
            result.failures[key] = result.failures.get(key, 0) + count
        result.reconnects += load["reconnects"]
        result.loadgen_cpu.append(pct(load["cpu"], load["end"] - load["start"]))
    result.sink_cpu = pct(sink1["cpu"] - sink0["cpu"], sink1["now"] - sink0["now"])
    if target0 is not None and target1 is not None:
        result.target_cpu = pct(target1 - target0, result.window)
    result.machine_busy = pct(busy1 - busy0, total1 - total0)

    stats = await drain(sink, result.accepted_rcpts, args.drain_timeout, args.stall)
    result.delivered = stats["distinct"]
    result.deliveries = stats["deliveries"]
    result.duplicates = stats["duplicates"]
    result.dkim_signed = stats["dkim_signed"]
    result.strays = stats["strays"]
    result.drained = result.deliveries >= result.accepted_rcpts
    result.missing = max(0, result.accepted_rcpts - result.deliveries)
    if result.delivered:
        result.delivered_window = stats["last"] - start
        result.delivered_rate = result.delivered / max(result.delivered_window, result.window)
    if target.queued is not None:
        result.leftover_queue = {k: v for k, v in target.queued().items() if v}
    verify(result, target)
    return result


async def drain(sink: Child, expected: int, timeout: float, stall: float) -> dict[str, Any]:
    """Poll the sink until every expected delivery arrived, progress stalls, or the deadline."""
    stats = await sink.ask("stats")
    deadline = time.monotonic() + timeout
    progress_at, seen = time.monotonic(), stats["deliveries"]
    while stats["deliveries"] < expected:
        now = time.monotonic()
        if now > deadline or now - progress_at > stall:
            break
        await asyncio.sleep(0.2)
        stats = await sink.ask("stats")
        if stats["deliveries"] != seen:
            progress_at, seen = time.monotonic(), stats["deliveries"]
    return stats


def verify(result: RunResult, target: Target) -> None:
    """Everything that makes a run's figures meaningless is a problem of the run."""
    if not result.accepted:
        result.problems.append("no message accepted")
    if result.failures:
        total = sum(result.failures.values())
        top = sorted(result.failures.items(), key=lambda kv: -kv[1])[:3]
        result.problems.append(f"{total} failed commands or sessions: {dict(top)}")
    if result.missing:
        result.problems.append(
            f"{result.missing} accepted recipients not delivered within the drain deadline"
        )
    if result.duplicates:
        result.problems.append(f"{result.duplicates} duplicate deliveries")
    if result.deliveries > result.accepted_rcpts:
        # More at the sink than acknowledged to the client: a 250 was lost or never sent.
        result.problems.append(
            f"{result.deliveries - result.accepted_rcpts} deliveries of unacknowledged messages"
        )
    if target.is_relay and result.dkim_signed < result.delivered:
        result.problems.append(
            f"{result.delivered - result.dkim_signed} relayed messages without DKIM-Signature"
        )


# -- targets ---------------------------------------------------------------------------------


async def start_targets(
    bench: Bench, sink_port: int, tmp: Path, stack: contextlib.AsyncExitStack
) -> None:
    args = bench.args
    if "bare" in args.targets:
        # The sink accepts any AUTH: the bare baseline gets the same session as the relay.
        bench.targets.append(
            Target(
                "bare",
                "bare aiosmtpd sink",
                Endpoint(sink_port, SENDER_DOMAIN, "bench", "bench-password"),
            )
        )
    if "postfix" in args.targets:
        bench.targets.append(await start_postfix(sink_port, tmp, stack))
    if "relay" in args.targets:
        for database in args.database:
            label = f"relay ({'SQLite' if database == 'sqlite' else 'PostgreSQL'})"
            instance = RelayInstance(
                tmp / f"relay-{database}",
                sink_port,
                database=database,
                pg_admin_url=args.pg_admin_url,
                sessions=args.sessions,
                extra_env=dict(args.relay_env),
            )
            target = Target(f"relay-{database}", label, is_relay=True, died=instance.died)
            stack.push_async_callback(instance.stop)
            print(f"starting {label} ...", flush=True)
            try:
                target.endpoint = await instance.start()
            except Exception as exc:  # asyncpg's and the like too: report, go on with the rest
                known = isinstance(exc, RuntimeError | ChildError)
                target.error = str(exc) if known else f"{type(exc).__name__}: {exc}"
                print(f"  {label} failed to start: {target.error}", file=sys.stderr, flush=True)
            bench.targets.append(target)


async def start_postfix(sink_port: int, tmp: Path, stack: contextlib.AsyncExitStack) -> Target:
    command = postfix.find_postfix()
    if command is None:
        return Target(
            "postfix",
            "Postfix",
            skipped="postfix is not installed (see docs/benchmarks.md to install it)",
        )
    if os.geteuid() != 0:
        return Target("postfix", "Postfix", skipped="a private Postfix instance needs root")
    label = f"Postfix {postfix.version(command)}".strip()
    instance = postfix.PostfixInstance(command, tmp / "postfix", free_port(), sink_port)
    # Stopped on every way out: normal end, exception, Ctrl-C, and atexit as a last resort.
    on_exit(instance.stop)

    async def stop() -> None:
        await asyncio.to_thread(instance.stop)
        forget(instance.stop)

    stack.push_async_callback(stop)
    print(f"starting {label} ...", flush=True)
    try:
        await asyncio.to_thread(instance.start)
    except (RuntimeError, OSError, KeyError) as exc:  # KeyError: no "postfix" user
        print(f"  {label} failed to start: {exc}", file=sys.stderr, flush=True)
        return Target("postfix", label, error=str(exc))
    endpoint = Endpoint(instance.port, SENDER_DOMAIN, pid=instance.master_pid())
    return Target("postfix", label, endpoint, queued=instance.queued, died=instance.died)


# -- report ----------------------------------------------------------------------------------


def medians(bench: Bench) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for target in bench.targets:
        runs = [r for r in bench.runs if r.target == target.key]
        if runs:
            out[target.key] = {
                "accepted": statistics.median(r.accepted_rate for r in runs),
                "delivered": statistics.median(r.delivered_rate for r in runs),
                "runs": len(runs),
            }
    return out


def not_run(target: Target) -> str:
    if target.skipped:
        return f"skipped: {target.skipped}"
    if target.error:
        return f"failed to start: {target.error.splitlines()[0]}"
    return "no completed run"


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}" if b else "-"


def report(bench: Bench) -> str:
    med = medians(bench)
    postfix_m = med.get("postfix", {})
    bare_m = med.get("bare", {})
    head = ["target", "accepted msgs/s", "delivered msgs/s", "acc/Postfix", "del/Postfix"]
    head += ["acc/bare", "del/bare", "runs ok"]
    rows: list[list[str]] = [head]
    for target in bench.targets:
        if target.key not in med:
            rows.append([target.label, "-", "-", "-", "-", "-", "-", not_run(target)[:60]])
            continue
        m = med[target.key]
        runs = [r for r in bench.runs if r.target == target.key]
        rows.append(
            [
                target.label,
                f"{m['accepted']:.1f}",
                f"{m['delivered']:.1f}",
                ratio(m["accepted"], postfix_m.get("accepted")),
                ratio(m["delivered"], postfix_m.get("delivered")),
                ratio(m["accepted"], bare_m.get("accepted")),
                ratio(m["delivered"], bare_m.get("delivered")),
                f"{sum(r.ok for r in runs)}/{len(runs)}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
            for i, c in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"(medians of up to {bench.args.repeat} runs per target; ratios of medians)")
    for target in bench.targets:
        if target.is_relay and target.key in med and postfix_m:
            r = med[target.key]["accepted"] / postfix_m["accepted"]
            verdict = "meets" if r >= 1.0 else "below"
            lines.append(
                f"{target.label}: accepted rate {r:.2f} x Postfix's ({verdict} the target >= 1.00)"
            )
    return "\n".join(lines)


def run_line(result: RunResult, repeat: int) -> str:
    cpu = (
        f"loadgen {'+'.join(f'{c:.0f}%' for c in result.loadgen_cpu)}, sink {result.sink_cpu:.0f}%"
    )
    if result.target_cpu is not None:
        cpu += f", {result.target.split('-')[0]} {result.target_cpu:.0f}%"
    cpu += f", machine {result.machine_busy:.0f}%"
    status = "ok" if result.ok else "FAILED: " + "; ".join(result.problems)
    return (
        f"run {result.rep}/{repeat}  {result.label:<20} accepted {result.accepted_rate:8.1f}/s"
        f"  delivered {result.delivered_rate:8.1f}/s  ({result.accepted} msgs; cpu {cpu})  {status}"
    )


def write_json(bench: Bench) -> Path:
    bench.args.results_dir.mkdir(parents=True, exist_ok=True)
    path = bench.args.results_dir / f"relay-bench-{bench.started}.json"
    n = 1
    while path.exists():  # two runs in the same second keep both files
        n += 1
        path = bench.args.results_dir / f"relay-bench-{bench.started}-{n}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(bench.args).items()}
    settings["relay_env"] = sorted(k for k, _ in bench.args.relay_env)  # names only
    data = {
        "started": bench.started,
        "interrupted": bench.interrupted,
        "settings": settings,
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": bench.load_before,
            "load_after": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "targets": [
            {
                "key": t.key,
                "label": t.label,
                "port": t.endpoint.port if t.endpoint else None,
                "skipped": t.skipped,
                "error": t.error,
            }
            for t in bench.targets
        ],
        "medians": medians(bench),
        "runs": [dataclasses.asdict(r) | {"ok": r.ok} for r in bench.runs],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# -- main ------------------------------------------------------------------------------------


async def run_bench(bench: Bench) -> None:
    args = bench.args
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    # Postfix's daemons run as the postfix user and must reach tmp/postfix (traverse only).
    tmp.chmod(0o711)
    try:
        async with contextlib.AsyncExitStack() as stack:
            sink = await Child.start("sink", "bench.sink", log_dir=tmp)
            stack.push_async_callback(sink.stop)
            sink_port = (await sink.read(30))["ready"]
            await start_targets(bench, sink_port, tmp, stack)
            for target in bench.targets:
                where = f"127.0.0.1:{target.endpoint.port}" if target.endpoint else ""
                print(f"target {target.label}: {where or not_run(target)}", flush=True)
            for rep in range(1, args.repeat + 1):
                for target in [t for t in bench.targets if t.endpoint and not t.error]:
                    try:
                        result = await run_once(bench, target, rep, sink, tmp)
                    except ChildError as exc:  # a helper died or hung: this run is void
                        if sink.proc.returncode is not None:
                            raise
                        result = RunResult(target.key, target.label, rep, "", problems=[str(exc)])
                    if target.died is not None and (why := target.died()):
                        # No point in running a dead target again; the table says why.
                        target.error = why
                        result.problems.append(why)
                    bench.runs.append(result)
                    print(run_line(result, args.repeat), flush=True)
    finally:
        if args.keep:
            print(f"kept logs and data in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def parse_env(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("RELAY_"):
            raise argparse.ArgumentTypeError(f"--relay-env wants RELAY_NAME=VALUE, got {item!r}")
        out.append((name, value))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.relay_bench",
        description="Accepted and delivered msgs/s of the relay, a bare Python SMTP sink and "
        "Postfix, on loopback, side by side (docs/benchmarks.md).",
    )
    p.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions (20)")
    p.add_argument("--recipients", type=int, default=1, help="recipients per message (1)")
    p.add_argument("--size", type=int, default=2048, help="message size in bytes (2048)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per run (10)")
    p.add_argument("--repeat", type=int, default=3, help="runs per target; medians reported (3)")
    p.add_argument("--procs", type=int, default=1, help="load generator processes (1)")
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma list of {', '.join(TARGETS)} (all)",
    )
    p.add_argument(
        "--database",
        default="sqlite",
        help="relay database(s): sqlite, postgres or sqlite,postgres (sqlite)",
    )
    p.add_argument(
        "--pg-admin-url",
        default=DEFAULT_PG_ADMIN_URL,
        help=f"PostgreSQL to create the benchmark database on ({DEFAULT_PG_ADMIN_URL})",
    )
    p.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="RELAY_X=VALUE",
        help="extra relay setting for the run (repeatable)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="seconds to wait after the load for every accepted message to arrive (60)",
    )
    p.add_argument(
        "--stall",
        type=float,
        default=15.0,
        help="stop waiting sooner when no delivery arrives for this long (15)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.database = [d.strip() for d in args.database.split(",") if d.strip()]
    for name, values, allowed in (
        ("--targets", args.targets, TARGETS),
        ("--database", args.database, DATABASES),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            p.error(f"{name}: choose from {', '.join(allowed)}")
    for name in ("sessions", "recipients", "repeat", "procs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.duration <= 0 or args.size < 512:
        p.error("--duration must be positive and --size at least 512")
    try:
        args.relay_env = parse_env(args.relay_env)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    print(
        f"relay throughput benchmark: {args.sessions} sessions, {args.recipients} recipient(s), "
        f"{args.size}-byte messages, {args.duration:g} s x {args.repeat} runs, "
        f"{args.procs} load process(es)\nmachine: {os.cpu_count()} CPUs, load average "
        + " ".join(f"{x:.2f}" for x in bench.load_before)
        + " (other work on the machine makes the figures noisy)",
        flush=True,
    )
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_bench(bench))
    except (KeyboardInterrupt, asyncio.CancelledError):
        bench.interrupted = True
        print("\ninterrupted: targets stopped; figures of the completed runs follow", flush=True)
    print()
    print(report(bench))
    path = write_json(bench)
    print(f"raw figures: {path}")
    failed = [t for t in bench.targets if t.error] + [r for r in bench.runs if not r.ok]
    return 1 if failed or bench.interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())

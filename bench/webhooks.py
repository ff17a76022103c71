"""Webhooks end to end: messages through SMTP to a sink, a receiver counting the webhooks.

    python -m bench.webhooks [--duration 10] [--repeat 3] [--webhooks 2] [--database sqlite]

One ``relay serve`` (bench/relay_target.py: the embedded default, or PostgreSQL), the SMTP sink
of the throughput benchmark (bench/sink.py) as its delivery server, and a webhook receiver
(bench/webhook_receiver.py) on loopback, allowed by ``webhooks.allow_networks``. Runs alternate
in the same process tree: webhooks **off** (the domain has none) and **on** (``--webhooks``
webhooks subscribed to ``delivery``, so every delivered recipient is posted that many times).
Each run is the load of bench/relay_bench.py (``--sessions`` sessions sending for
``--duration`` seconds, every recipient verified at the sink exactly once), then, with
webhooks on, waits until every expected webhook arrived (each ``webhook-id`` once, each
signature verified with the reference library at the receiver).

Reported per mode (medians): accepted msgs/s, SMTP end to end (messages at the sink per second,
from the start of the load to the last delivery), and with webhooks on the webhooks/s end to end
(webhooks received per second from the start of the load to the last webhook). Targets: at
least 1,000 webhooks/s, and SMTP end to end with webhooks at least 90 % of without. The exit
status is 1 when a run fails verification.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import relay_bench
from bench.children import Child, ChildError
from bench.loadgen import loop_factory
from bench.relay_target import SENDER_DOMAIN, RelayInstance

PASSWORD = "bench-webhooks-password"  # the throwaway benchmark account
MODES = ("off", "on")


@dataclass
class Run:
    mode: str
    rep: int
    result: relay_bench.RunResult
    expected_webhooks: int = 0
    webhooks: int = 0
    duplicates: int = 0
    bad_signatures: int = 0
    webhook_rate: float = 0.0  # received / (last webhook - start of the load)
    webhook_drain_rate: float = 0.0  # received / (last webhook - first webhook)
    receiver_cpu: float = 0.0  # % of one core over the whole run
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result.ok and not self.problems


class Account:
    """The benchmark user's session, to manage its domain's webhooks over /api.php."""

    def __init__(self, instance: RelayInstance, http: aiohttp.ClientSession) -> None:
        self.instance = instance
        self.http = http
        self.session_id = ""
        self.domain_id = 0
        self.signing_key = ""

    async def call(self, command: str, admin: bool = False, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"Command": command, **params}
        if admin:
            body["AdminAPIKey"] = self.instance.admin_key
        elif self.session_id:
            body["SessionID"] = self.session_id
        url = f"http://127.0.0.1:{self.instance.admin_port}/api.php"
        async with self.http.post(url, json=body) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
        if not data.get("Success"):
            raise RuntimeError(f"{command} failed: {data}")
        return data

    async def login(self) -> None:
        users = await self.call("users.get", admin=True)
        (user,) = [u for u in users["Users"] if u["EmailAddress"] == f"bench@{SENDER_DOMAIN}"]
        await self.call("user.update", admin=True, UserID=user["UserID"], Password=PASSWORD)
        login = await self.call(
            "user.login", EmailAddress=f"bench@{SENDER_DOMAIN}", Password=PASSWORD
        )
        self.session_id = login["SessionID"]
        domains = await self.call("emailgateway.getdomains")
        self.domain_id = int(domains["Domains"][0]["DomainID"])

    async def set_webhooks(self, urls: list[str]) -> None:
        listed = await self.call("emailgateway.getwebhooks", DomainID=self.domain_id)
        for hook in listed["Webhooks"]:
            await self.call(
                "emailgateway.deletewebhook", DomainID=self.domain_id, WebhookID=hook["WebhookID"]
            )
        for url in urls:
            await self.call(
                "emailgateway.addwebhook", DomainID=self.domain_id, Event="delivery", WebhookURL=url
            )
        self.signing_key = str(listed["SigningKey"])


async def wait_webhooks(rx: Child, expected: int, timeout: float, stall: float) -> dict[str, Any]:
    stats = await rx.ask("stats")
    deadline = time.monotonic() + timeout
    seen, progress_at = stats["posts"], time.monotonic()
    while stats["distinct"] < expected:
        now = time.monotonic()
        if now > deadline or now - progress_at > stall:
            break
        await asyncio.sleep(0.2)
        stats = await rx.ask("stats")
        if stats["posts"] != seen:
            seen, progress_at = stats["posts"], time.monotonic()
    return stats


async def one_run(
    bench: relay_bench.Bench,
    target: relay_bench.Target,
    mode: str,
    rep: int,
    sink: Child,
    rx: Child,
    account: Account,
    log_dir: Path,
) -> Run:
    args = bench.args
    urls = [f"http://127.0.0.1:{args.receiver_port}/hooks/{i}" for i in range(args.webhooks)]
    await account.set_webhooks(urls if mode == "on" else [])
    await rx.ask(f"reset {account.signing_key}")
    before = await rx.ask("stats")
    result = await relay_bench.run_once(bench, target, rep, sink, log_dir)
    run = Run(mode, rep, result)
    if mode == "off":
        return run
    sink_stats = await sink.ask("stats")
    load_start = sink_stats["last"] - result.delivered_window
    run.expected_webhooks = result.deliveries * args.webhooks
    stats = await wait_webhooks(rx, run.expected_webhooks, args.drain_timeout, args.stall)
    run.webhooks = stats["distinct"]
    run.duplicates = stats["duplicates"]
    run.bad_signatures = stats["bad_signatures"]
    if run.webhooks:
        run.webhook_rate = run.webhooks / max(stats["last"] - load_start, 1e-9)
        run.webhook_drain_rate = run.webhooks / max(stats["last"] - stats["first"], 1e-9)
        # The receiver's CPU is the harness's, on the same machine: shown, not subtracted.
        run.receiver_cpu = relay_bench.pct(
            stats["cpu"] - before["cpu"], stats["now"] - before["now"]
        )
    if run.webhooks < run.expected_webhooks:
        run.problems.append(f"{run.expected_webhooks - run.webhooks} webhooks did not arrive")
    if run.bad_signatures:
        run.problems.append(f"{run.bad_signatures} webhooks failed signature verification")
    if stats["types"] and set(stats["types"]) != {"delivered"}:
        run.problems.append(f"unexpected webhook types {stats['types']}")
    return run


def line(run: Run, repeat: int) -> str:
    r = run.result
    text = (
        f"run {run.rep}/{repeat} webhooks {run.mode:<3}  accepted {r.accepted_rate:7.1f}/s  "
        f"SMTP end to end {r.delivered_rate:7.1f}/s  ({r.accepted} msgs, relay cpu "
        f"{r.target_cpu or 0:.0f}%, machine {r.machine_busy:.0f}%)"
    )
    if run.mode == "on":
        text += (
            f"  webhooks {run.webhooks}/{run.expected_webhooks}: {run.webhook_rate:7.1f}/s end to "
            f"end, {run.webhook_drain_rate:7.1f}/s first to last, receiver cpu "
            f"{run.receiver_cpu:.0f}%"
        )
    problems = run.result.problems + run.problems
    return text + ("  ok" if not problems else "  FAILED: " + "; ".join(problems))


def report(runs: list[Run]) -> str:
    def med(mode: str, attr: str, of_result: bool = True) -> float:
        values = [
            getattr(r.result, attr) if of_result else getattr(r, attr)
            for r in runs
            if r.mode == mode and r.ok
        ]
        return statistics.median(values) if values else 0.0

    off_e2e, on_e2e = med("off", "delivered_rate"), med("on", "delivered_rate")
    wh = med("on", "webhook_rate", of_result=False)
    lines = [
        "mode           accepted msgs/s  SMTP end to end msgs/s  webhooks/s end to end",
        f"webhooks off   {med('off', 'accepted_rate'):15.1f}  {off_e2e:22.1f}  {'-':>21}",
        f"webhooks on    {med('on', 'accepted_rate'):15.1f}  {on_e2e:22.1f}  {wh:21.1f}",
        "(medians of the runs that passed verification)",
    ]
    ratio = on_e2e / off_e2e if off_e2e else 0.0
    lines.append(
        f"SMTP end to end with webhooks = {ratio:.2f} x without "
        f"({'meets' if ratio >= 0.9 else 'below'} the target >= 0.90)"
    )
    lines.append(
        f"webhooks end to end = {wh:.0f}/s ({'meets' if wh >= 1000 else 'below'} the target "
        ">= 1,000/s)"
    )
    return "\n".join(lines)


async def run_bench(args: argparse.Namespace, runs: list[Run]) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    tmp = Path(tempfile.mkdtemp(prefix="relay-webhook-bench-"))
    bench = relay_bench.Bench(args)
    try:
        async with contextlib.AsyncExitStack() as stack:
            sink = await Child.start("sink", "bench.sink", log_dir=tmp)
            stack.push_async_callback(sink.stop)
            sink_port = (await sink.read(30))["ready"]
            rx = await Child.start("webhook-receiver", "bench.webhook_receiver", log_dir=tmp)
            stack.push_async_callback(rx.stop)
            args.receiver_port = (await rx.read(30))["ready"]
            instance = RelayInstance(
                tmp / "relay",
                sink_port,
                database=args.database[0],
                pg_admin_url=args.pg_admin_url,
                sessions=args.sessions,
                extra_env={"RELAY_WEBHOOKS_ALLOW_NETWORKS": "127.0.0.0/8", **dict(args.relay_env)},
            )
            stack.push_async_callback(instance.stop)
            print(f"starting relay ({args.database[0]}) ...", flush=True)
            target = relay_bench.Target(
                f"relay-{args.database[0]}", "relay", is_relay=True, died=instance.died
            )
            target.endpoint = await instance.start()
            http = await stack.enter_async_context(aiohttp.ClientSession())
            account = Account(instance, http)
            await account.login()
            for rep in range(1, args.repeat + 1):
                for mode in MODES:
                    try:
                        run = await one_run(bench, target, mode, rep, sink, rx, account, tmp)
                    except ChildError as exc:
                        result = relay_bench.RunResult(target.key, target.label, rep, "")
                        run = Run(mode, rep, result, problems=[str(exc)])
                    if why := instance.died():
                        run.problems.append(why)
                    runs.append(run)
                    print(line(run, args.repeat), flush=True)
                    if why:
                        return
    finally:
        if args.keep:
            print(f"kept logs and data in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.webhooks",
        description="Webhooks/s end to end, and the SMTP end-to-end rate with and without "
        "webhooks, on one relay (see the module docstring).",
    )
    p.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions (20)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per run (10)")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode; medians reported (3)")
    p.add_argument("--webhooks", type=int, default=2, help="webhooks per delivered event (2)")
    p.add_argument("--recipients", type=int, default=1, help="recipients per message (1)")
    p.add_argument("--database", default="sqlite", choices=relay_bench.DATABASES)
    p.add_argument("--pg-admin-url", default=relay_bench.DEFAULT_PG_ADMIN_URL)
    p.add_argument("--relay-env", action="append", default=[], metavar="RELAY_X=VALUE")
    p.add_argument("--drain-timeout", type=float, default=90.0)
    p.add_argument("--stall", type=float, default=20.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ours = p.parse_args(argv)
    if ours.webhooks < 1:
        p.error("--webhooks must be at least 1")
    # The load itself is bench/relay_bench.py's: its options, ours on top.
    args = relay_bench.parse_args(
        [
            "--sessions", str(ours.sessions), "--duration", str(ours.duration),
            "--repeat", str(ours.repeat), "--recipients", str(ours.recipients),
            "--targets", "relay", "--database", ours.database,
            "--pg-admin-url", ours.pg_admin_url, "--drain-timeout", str(ours.drain_timeout),
            "--stall", str(ours.stall), *[f"--relay-env={e}" for e in ours.relay_env],
        ]
    )  # fmt: skip
    args.webhooks, args.keep, args.receiver_port = ours.webhooks, ours.keep, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"webhook benchmark: {args.sessions} sessions, {args.duration:g} s x {args.repeat} runs "
        f"per mode, {args.webhooks} webhook(s) per delivered recipient, {args.database[0]}\n"
        f"machine: {os.cpu_count()} CPUs, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + " (other work on the machine makes the figures noisy)",
        flush=True,
    )
    runs: list[Run] = []
    interrupted = False
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_bench(args, runs))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        print("\ninterrupted; figures of the completed runs follow", flush=True)
    print()
    print(report(runs))
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 1 if interrupted or not runs or any(not r.ok for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())

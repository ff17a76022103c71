"""Throughput and latency of /api/v1/inbound-relay-domain-check, against a bare aiohttp baseline.

    python -m bench.relay_domain_check [--domains 10000] [--clients 50] [--duration 3]
                                       [--rounds 3]

Starts two servers, each in its own process, on loopback:
1. the relay's admin app (the real ``AdminServer`` with its dispatcher, auth and in-memory
   relay-domain set) on a fresh SQLite database seeded with N Enabled domains;
2. a baseline: a bare aiohttp handler answering the same JSON as a constant.
They are driven in turn, ``--rounds`` times each, for ``--duration`` seconds (after a short
warm-up) by ``--clients`` concurrent keep-alive clients (aiohttp) asking for random domains,
90% of them Enabled (200) and 10% unknown (500). Every answer is checked. Prints requests/s,
p50 and p99 latency of each server's median round, and the ratio. The client is Python too
and shares the machine, so the absolute figures are a floor; the ratio to the baseline
measured the same way is what the number means.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ADMIN_KEY = "bench-admin-key-" + "x" * 24
PATH = "/api/v1/inbound-relay-domain-check"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def domain_name(i: int) -> str:
    return f"d{i}.bench-example.com"


# -- servers (child processes) -----------------------------------------------------------------


async def serve_relay(port: int, data_dir: str, domains: int) -> None:
    from sqlalchemy import insert

    from relay import config
    from relay.admin.app import AdminServer
    from relay.secrets import hash_secret
    from relay.services import Services
    from relay.store import migrate
    from relay.store import schema as t
    from relay.store.db import utcnow

    settings = config.load(
        None,
        env={
            "RELAY_DATA_DIR": data_dir,
            "RELAY_ADMIN_API_KEY": ADMIN_KEY,
            "RELAY_HOSTNAME": "relay.bench",
            "RELAY_LOG_LEVEL": "warning",
        },
    )
    services = await Services.create(settings)
    await migrate.upgrade(services.db)
    await services.start()
    now = utcnow()
    async with services.db.write() as conn:
        user = await conn.execute(
            insert(t.users)
            .values(
                email="bench@example.com",
                group_id=1,
                api_key_hash=hash_secret("bench"),
                created_at=now,
                updated_at=now,
            )
            .returning(t.users.c.id)
        )
        user_id = user.scalar_one()
        rows = [
            {
                "user_id": user_id,
                "name": domain_name(i),
                "status": "Enabled",
                "options": {},
                "dkim_selector": "bench",
                "dkim_private_key": "-",
                "dkim_public_key": "-",
                "verification_meta": {},
                "policy_meta": [],
                "created_at": now,
                "updated_at": now,
            }
            for i in range(domains)
        ]
        for start in range(0, len(rows), 5000):
            await conn.execute(insert(t.gateway_domains), rows[start : start + 5000])
    server = AdminServer(services, "127.0.0.1", port)
    await server.start()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()
    await services.close()


async def serve_baseline(port: int) -> None:
    from relay.admin.dispatcher import json_response

    async def handle(request: web.Request) -> web.Response:
        return json_response({"Success": True, "RelayDomain": "d1.bench-example.com"})

    app = web.Application()
    app.router.add_get(PATH, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


def run_server(argv: list[str]) -> None:
    from relay import log
    from relay.server import loop_factory

    log.configure("console", "warning")  # to stderr: stdout carries the READY line

    role, port = argv[0], int(argv[1])
    main = serve_relay(port, argv[2], int(argv[3])) if role == "relay" else serve_baseline(port)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main)


# -- load (this process) -----------------------------------------------------------------------


async def drive(
    port: int, domains: int, clients: int, duration: float, warmup: float, strict: bool
) -> tuple[int, list[float], int]:
    url = f"http://127.0.0.1:{port}{PATH}"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    latencies: list[float] = []
    errors = 0
    done = 0
    connector = aiohttp.TCPConnector(limit=clients)
    rng = random.Random(1)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(until: float, record: bool) -> None:
            nonlocal errors, done
            while time.perf_counter() < until:
                hit = rng.random() < 0.9
                domain = domain_name(rng.randrange(domains)) if hit else "nobody.example"
                started = time.perf_counter()
                async with session.get(url, params={"domain": domain}, headers=headers) as resp:
                    body = await resp.read()
                elapsed = time.perf_counter() - started
                expected = 200 if (hit or not strict) else 500
                if resp.status != expected or (expected == 200 and b'"Success":true' not in body):
                    errors += 1
                if record:
                    latencies.append(elapsed)
                    done += 1

        end_warmup = time.perf_counter() + warmup
        await asyncio.gather(*(worker(end_warmup, False) for _ in range(clients)))
        end = time.perf_counter() + duration
        await asyncio.gather(*(worker(end, True) for _ in range(clients)))
    return done, latencies, errors


def start(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.relay_domain_check", "--serve", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def summary(label: str, runs: list[tuple[int, list[float], int]], duration: float) -> float:
    """Print the median round (by rate) of one server; return its rate."""
    rates = sorted((done / duration, lat, errors) for done, lat, errors in runs)
    rate, lat, _ = rates[len(rates) // 2]
    wrong = sum(errors for _, _, errors in runs)
    lat = sorted(lat)
    p50 = statistics.median(lat) * 1000
    p99 = lat[max(0, int(len(lat) * 0.99) - 1)] * 1000
    print(
        f"{label:9} {rate:9.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   "
        f"(median of {len(runs)} rounds; {wrong} wrong answers)"
    )
    return rate


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        run_server(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=10_000, help="Enabled domains seeded")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server")
    args = parser.parse_args()
    print(
        f"inbound-relay-domain-check: {args.domains} Enabled domains, {args.clients} clients, "
        f"{args.rounds} x {args.duration:g} s per server, {os.cpu_count()} CPUs"
    )
    from relay.server import loop_factory

    with tempfile.TemporaryDirectory(prefix="relay-bench-") as data_dir:
        relay_port, base_port = free_port(), free_port()
        servers = [
            start(["relay", str(relay_port), data_dir, str(args.domains)]),
            start(["baseline", str(base_port)]),
        ]
        results: dict[str, list[tuple[int, list[float], int]]] = {"relay": [], "baseline": []}
        try:
            # Alternate the two servers so background load on a shared machine hits both alike.
            for _ in range(args.rounds):
                for label, port, strict in (
                    ("relay", relay_port, True),
                    ("baseline", base_port, False),
                ):
                    run = drive(
                        port, args.domains, args.clients, args.duration, args.warmup, strict
                    )
                    with asyncio.Runner(loop_factory=loop_factory()) as runner:
                        results[label].append(runner.run(run))
        finally:
            for proc in servers:
                stop(proc)
    relay = summary("relay", results["relay"], args.duration)
    baseline = summary("baseline", results["baseline"], args.duration)
    print(f"relay / baseline: {relay / baseline:.2f}")


if __name__ == "__main__":
    main()

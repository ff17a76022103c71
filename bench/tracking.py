"""Tracking: the cost of per-recipient bodies, and the tracking listener under load.

    python -m bench.tracking [--duration 10] [--connections 64] [--recipients 1,10,100]

Two parts, each skippable:

- **render** (in process): ``Tracker.sign`` on a realistic HTML newsletter (multipart/
  alternative, about 15 KB of HTML, 20 links) with links, opens and unsubscribe on, for messages
  of 1, 10 and 100 recipients, against signing the same message once without tracking. Reports
  wall time per message and per recipient, and the CPU time of this process (the RSA work runs
  in the signer's thread of the same process, so CPU covers it).
- **http**: ``relay serve`` (embedded SQLite, delivery off) with a known ``tracking.secret``; one
  message is queued over SMTP, click and pixel URLs of it are made with that secret, and wrk (a
  C load generator; ``apt-get install wrk`` is run when it is missing and we are root) requests
  them with keep-alive connections for ``--duration`` seconds each. Reports requests/s and
  latency percentiles (target: 5,000 requests/s, p99 under 10 ms), then checks that the relay
  recorded the hits (events in its database).

- **smtp**: SMTP end to end: ``relay serve`` (``tracking.host`` set) delivering to the
  throughput benchmark's sink (bench/sink.py), 2 KB HTML messages from ``bench.loadgen``
  sessions, the load of bench/relay_bench.py (every recipient verified at the sink exactly
  once, DKIM-signed), runs alternating with all three options off and on
  (``emailgateway.updatedomain``), ``--repeat-smtp`` times each; reports messages at the sink
  per second from the start of the load to the last delivery (medians) and their ratio
  (target: on >= 80 % of off), accepted msgs/s, the relay's CPU time per accepted message (its
  whole process tree: steadier than the rate on a shared machine), and whether every message
  of the "on" runs (and none of the "off" runs) reached the sink with the one-click
  unsubscribe header.

The machine's load average is printed before and after: on a shared machine, figures move.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.children import Child
from bench.relay_target import RelayInstance, free_port

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
TARGET_RPS, TARGET_P99_MS = 5000.0, 10.0


def newsletter(links: int = 20) -> bytes:
    """A multipart/alternative message like a real newsletter: table layout, inline styles."""
    rows = "".join(
        f'<tr><td style="padding:12px;font-family:Arial,sans-serif;font-size:14px;color:#333">'
        f'<a href="https://shop.example.com/products/{i}?utm_source=news&amp;utm_medium=email"'
        f' style="color:#0a58ca;text-decoration:none"><img src="https://cdn.example.com/p/{i}.jpg"'
        f' width="120" alt="Product {i}"></a><p style="margin:8px 0">Product {i}: a short'
        f" description of what it is and why it is good, with a few more words.</p></td></tr>\r\n"
        for i in range(links)
    )
    html = (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\r\n'
        '<html><head><meta charset="utf-8"><style>td{vertical-align:top}</style></head>\r\n'
        f'<body style="margin:0"><table width="600" align="center">\r\n{rows}</table></body></html>'
    )
    text = "This week's products: https://shop.example.com/products\r\n"
    return (
        "From: News <news@bench.example.com>\r\nTo: reader@example.net\r\nSubject: This week\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <news-1@bench.example.com>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="nl"\r\n\r\n'
        "--nl\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{text}--nl\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 7bit\r\n\r\n{html}\r\n--nl--\r\n"
    ).encode()


# -- render ------------------------------------------------------------------------------------


async def bench_render(counts: list[int], repeat: int) -> list[dict[str, Any]]:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from relay.config import Settings
    from relay.directory import DomainView
    from relay.dkim import DkimSigner, generate_key
    from relay.message import parse
    from relay.tracking.render import Options, Tracker
    from relay.tracking.tokens import TokenCodec

    key = load_pem_private_key(generate_key(2048).private_pem.encode(), password=None)
    assert isinstance(key, RSAPrivateKey)
    domain = DomainView(1, 1, "bench.example.com", "Enabled", "sel", key, {"UnsubscribeLink": 1})
    settings = Settings()
    settings.tracking.host = "track.bench.example.com"
    signer = DkimSigner(1)
    tracker = Tracker(settings, TokenCodec(os.urandom(32)), signer)
    data = newsletter()
    trace = (b"Received", b" from bench by relay.bench.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n")
    rows: list[dict[str, Any]] = []
    try:
        for label, options, n in [("untracked", Options(False, False, False), 1)] + [
            ("tracked", Options(True, True, True), n) for n in counts
        ]:
            rcpts = [f"reader{i}@example.net" for i in range(n)]
            runs = max(1, repeat // n)
            await tracker.sign(  # warm up (imports, caches)
                domain=domain, message=parse(data), queue_id="warm", recipients=rcpts,
                trace=trace, options=options,
            )  # fmt: skip
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for i in range(runs):
                out = await tracker.sign(
                    domain=domain, message=parse(data), queue_id=f"m{i}", recipients=rcpts,
                    trace=trace, options=options,
                )  # fmt: skip
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            size = len(out.body)
            rows.append(
                {
                    "case": label,
                    "recipients": n,
                    "messages": runs,
                    "wall_ms_per_message": 1000 * wall / runs,
                    "wall_us_per_recipient": 1e6 * wall / runs / n,
                    "cpu_us_per_recipient": 1e6 * cpu / runs / n,
                    "body_bytes": size,
                }
            )
    finally:
        signer.close()
    return rows


# -- http --------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, check=False)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    return found


def run_wrk(
    wrk: str, url: str, duration: float, connections: int, threads: int, rate: float = 0.0
) -> dict[str, Any]:
    """wrk as fast as it goes, or (``rate`` > 0) offering about ``rate`` requests/s: each
    connection waits connections/rate seconds after an answer (wrk's ``delay()`` hook), so the
    latency is measured at that load rather than at saturation, where it is only queueing."""
    cmd = [
        wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:.0f}s", "--latency",
        "-H", f"User-Agent: {BROWSER}",
    ]  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if rate > 0:
            script.write(f"function delay() return {1000.0 * connections / rate:.3f} end\n")
    if rate > 0:
        cmd += ["-s", script.name]
    try:
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    latency = {
        p: _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", out, re.MULTILINE)
    }
    return {
        "requests": total,
        "rps": rps,
        "p50_ms": latency.get("50"),
        "p90_ms": latency.get("90"),
        "p99_ms": latency.get("99"),
        "non_2xx_3xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


async def queue_one(port: int, username: str, password: str) -> str:
    import aiosmtplib

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    await client.login(username, password)
    errors, reply = await client.sendmail(
        "news@bench.example.com", ["reader@example.net"], newsletter(2)
    )
    await client.quit()
    assert not errors, errors
    return reply.rsplit(" ", 1)[1]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_events(db: Path, message_id: str) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT event, count(*) FROM events WHERE message_id = ? GROUP BY event", (message_id,)
        ).fetchall()
    return dict(rows)


async def bench_http(args: argparse.Namespace) -> dict[str, Any]:
    from relay.tracking.tokens import CLICK, OPEN, TokenCodec

    wrk = ensure_wrk()
    secret = base64.b64encode(os.urandom(32)).decode()
    root = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    relay = RelayInstance(
        root,
        free_port(),
        extra_env={"RELAY_TRACKING_SECRET": secret, "RELAY_DELIVERY_ENABLED": "false"},
    )
    results: dict[str, Any] = {}
    try:
        endpoint = await relay.start()
        mid = await queue_one(endpoint.port, endpoint.username, endpoint.password)
        codec = TokenCodec(base64.b64decode(secret))
        # Made an hour ago: the hits count as people's, not as prefetches.
        prefix = codec.prefix(mid, "reader@example.net", int(time.time()) - 3600)
        assert prefix is not None
        base = f"http://127.0.0.1:{relay.tracking_port}"
        urls = {
            "click": f"{base}/c/{codec.make(CLICK, prefix, 0, 'https://shop.example.com/p/1')}",
            "pixel": f"{base}/o/{codec.make(OPEN, prefix)}",
        }
        assert endpoint.pid is not None
        for name, url in urls.items():
            cpu0 = process_cpu(endpoint.pid)
            results[name] = await asyncio.to_thread(
                run_wrk, wrk, url, args.duration, args.connections, args.threads, args.rate
            )
            cpu = process_cpu(endpoint.pid) - cpu0
            # CPU of the relay's main process (the listener and the feedback writer) per
            # request: what a free core would cost, whatever else runs on the machine.
            results[name]["cpu_us_per_request"] = 1e6 * cpu / max(results[name]["requests"], 1)
        db = root / "data" / "relay.sqlite3"
        expected = results["click"]["requests"] + results["pixel"]["requests"]
        deadline = time.monotonic() + 60
        while True:
            counts = count_events(db, mid)
            recorded = counts.get("clicked", 0) + counts.get("opened", 0)
            if recorded >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        results["recorded"] = {"expected": expected, "events": counts}
        results["rate"] = args.rate
    finally:
        await relay.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


# -- smtp --------------------------------------------------------------------------------------


async def set_options(relay: RelayInstance, on: bool) -> None:
    import aiohttp

    flag = 1 if on else 0
    body = {
        "Command": "emailgateway.updatedomain",
        "APIKey": relay.api_key,
        "DomainID": relay.domain_id,
        "LinkTracking": flag,
        "OpenTracking": flag,
        "UnsubscribeLink": flag,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{relay.admin_port}/api.php", json=body) as resp,
    ):
        data = await resp.json(content_type=None)
    if not data.get("Success"):
        raise RuntimeError(f"updatedomain failed: {data}")


async def bench_smtp(args: argparse.Namespace) -> dict[str, Any]:
    """One ``relay serve`` delivering to the benchmark sink; runs alternate off and on."""
    from bench import relay_bench

    root = Path(tempfile.mkdtemp(prefix="bench-tracking-smtp-"))
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    sink = await Child.start("sink", "bench.sink", log_dir=root)
    try:
        sink_port = (await sink.read(30))["ready"]
        relay = RelayInstance(
            root / "relay",
            sink_port,
            sessions=args.sessions,
            extra_env={"RELAY_TRACKING_HOST": "track.bench.example.com"},
        )
        try:
            endpoint = await relay.start()
            # relay_bench's load as its own defaults give it (one recipient, 2 KB), in HTML.
            load = relay_bench.parse_args(
                ["--sessions", str(args.sessions), "--duration", str(args.duration)]
            )
            load.html = True
            bench = relay_bench.Bench(load)
            target = relay_bench.Target("relay-sqlite", "relay", is_relay=True, died=relay.died)
            target.endpoint = endpoint
            for rep in range(1, args.repeat_smtp + 1):
                # Off-on, then on-off: a drift over the sitting (the database growing, the
                # machine's other work) does not favour one mode.
                for mode in ("off", "on") if rep % 2 else ("on", "off"):
                    await set_options(relay, mode == "on")
                    await asyncio.sleep(0.5)  # the option change reaches every SMTP process
                    r = await relay_bench.run_once(bench, target, rep, sink, root)
                    one_click = (await sink.ask("stats"))["one_click"]
                    problems = list(r.problems)
                    if why := relay.died():
                        problems.append(why)
                    runs[mode].append(
                        {
                            "accepted_rate": r.accepted_rate,
                            "rate": r.delivered_rate,
                            # The relay's processes per accepted message.
                            "cpu_us_per_message": 1e4
                            * (r.target_cpu or 0.0)
                            * r.window
                            / max(r.accepted, 1),
                            "delivered": r.delivered,
                            "one_click": one_click,
                            "problems": problems,
                        }
                    )
                    failed = "  FAILED: " + "; ".join(problems) if problems else ""
                    print(
                        f"  {mode:3s} run {rep}: accepted {r.accepted_rate:6.0f}/s  end to end "
                        f"{r.delivered_rate:6.0f}/s  ({r.delivered} delivered, {one_click} with "
                        f"List-Unsubscribe-Post){failed}",
                        flush=True,
                    )
        finally:
            await relay.stop()
    finally:
        await sink.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {"runs": runs}


def print_smtp(results: dict[str, Any]) -> bool:
    import statistics

    runs = results["runs"]

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode]) if runs[mode] else 0.0

    off, on = med("off", "rate"), med("on", "rate")
    ratio = on / off if off else 0.0
    print("\nSMTP end to end (at the sink), 2 KB HTML messages, all three options off vs on")
    print(
        f"off {off:8.0f} msgs/s   on {on:8.0f} msgs/s   on/off {100 * ratio:5.1f} %  "
        f"(target >= 80 %; medians)"
    )
    print(
        f"accepted: off {med('off', 'accepted_rate'):6.0f} msgs/s   on "
        f"{med('on', 'accepted_rate'):6.0f} msgs/s"
    )
    cpu_off, cpu_on = med("off", "cpu_us_per_message"), med("on", "cpu_us_per_message")
    print(
        f"relay CPU per message: off {cpu_off:6.0f} us   on {cpu_on:6.0f} us   "
        f"off/on {100 * cpu_off / cpu_on if cpu_on else 0:5.1f} %"
    )
    for mode in ("off", "on"):
        rates = ", ".join(f"{r['rate']:.0f}" for r in runs[mode])
        print(f"  {mode} runs (msgs/s end to end): {rates}")
    failed = [p for mode in runs for r in runs[mode] for p in r["problems"]]
    # Tracking really applied: every message of the "on" runs reached the sink with its
    # one-click unsubscribe header, and none of the "off" runs did.
    applied = all(r["one_click"] == r["delivered"] > 0 for r in runs["on"])
    leaked = any(r["one_click"] for r in runs["off"])
    if failed:
        print(f"  runs failed verification: {failed[:3]}")
    if not applied or leaked:
        print("  tracking was not applied as set (see the runs above): this ratio says nothing")
    return not failed and applied and not leaked and ratio >= 0.8


# -- report ------------------------------------------------------------------------------------


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min), {os.cpu_count()} cores"


def print_render(rows: list[dict[str, Any]]) -> None:
    print("\nPer-recipient bodies (links, opens and unsubscribe on; 20-link HTML newsletter)")
    head = ("case", "rcpts", "ms/msg", "us/rcpt", "cpu us/rcpt", "bytes")
    print("{:<10} {:>5} {:>8} {:>8} {:>12} {:>7}".format(*head))
    for r in rows:
        print(
            f"{r['case']:<10} {r['recipients']:>5} {r['wall_ms_per_message']:>8.2f} "
            f"{r['wall_us_per_recipient']:>8.0f} {r['cpu_us_per_recipient']:>12.0f} "
            f"{r['body_bytes']:>7}"
        )


def print_http(results: dict[str, Any]) -> bool:
    ok = True
    offered = f"offered {results['rate']:.0f} req/s" if results.get("rate") else "saturating"
    print(
        f"\nTracking listener (wrk, keep-alive, {offered}; target {TARGET_RPS:.0f} req/s, "
        "p99 < 10 ms)"
    )
    head = ("path", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "cpu us/req")
    print("{:<6} {:>9} {:>7} {:>7} {:>7} {:>7} {:>10}  verdict".format(*head))
    for name in ("click", "pixel"):
        r = results[name]
        good = (
            r["rps"] >= TARGET_RPS and (r["p99_ms"] or 1e9) < TARGET_P99_MS and not r["non_2xx_3xx"]
        )
        ok = ok and good
        print(
            f"{name:<6} {r['rps']:>9.0f} {r['p50_ms'] or 0:>7.2f} {r['p90_ms'] or 0:>7.2f} "
            f"{r['p99_ms'] or 0:>7.2f} {r['non_2xx_3xx']:>7} {r['cpu_us_per_request']:>10.0f}  "
            f"{'met' if good else 'MISSED'}"
            + (f" ({r['socket_errors']})" if r["socket_errors"] else "")
        )
    rec = results["recorded"]
    got = rec["events"].get("clicked", 0) + rec["events"].get("opened", 0)
    print(f"recorded: {got} of {rec['expected']} hits as events ({rec['events']})")
    return ok and got >= rec["expected"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer about this many requests/s per path (0: as fast as wrk goes); the latency "
        "target is stated at 5,000 requests/s",
    )
    ap.add_argument("--recipients", default="1,10,100", help="message sizes of the render part")
    ap.add_argument("--repeat", type=int, default=200, help="recipients rendered per case")
    ap.add_argument("--sessions", type=int, default=20, help="SMTP sessions (smtp part)")
    ap.add_argument("--repeat-smtp", type=int, default=3, help="off/on run pairs")
    ap.add_argument("--skip-render", action="store_true")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--skip-smtp", action="store_true")
    return ap.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    print(load())
    ok = True
    if not args.skip_render:
        counts = [int(n) for n in args.recipients.split(",") if n.strip()]
        print_render(await bench_render(counts, args.repeat))
    if not args.skip_http:
        ok = print_http(await bench_http(args))
    if not args.skip_smtp:
        ok = print_smtp(await bench_smtp(args)) and ok
    print(load())
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    from bench.loadgen import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

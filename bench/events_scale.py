"""The events and statistics commands over a large event log, timed through the HTTP API.

    python -m bench.events_scale --events 10000000 --database postgres
    python -m bench.events_scale --events 200000 --database sqlite

1. A fresh database (PostgreSQL on loopback, or a SQLite file), migrated; ``relay serve``
   started on it (delivery off: nothing is sent), accounts made over /api.php: five users,
   twenty sender domains; the queried domain gets ``--domain-share`` of the events (10 %: one
   million of ten million), its user two more domains.
2. ``--events`` events over ``--days`` days, as the relay writes them: each message accepted
   (tags on some), then delivered, deferred and retried, bounced or given up, opened
   (some by machines), clicked, unsubscribed, complained; recipients refused at RCPT; recipient
   domains from a long-tailed mix. Written with COPY into ``events`` (PostgreSQL; the rollup
   trigger fires per COPY statement, as for any INSERT) or through the SQLite row trigger,
   day by day, with their messages and recipients; then VACUUM ANALYZE (what autovacuum does
   to a day's partition once it is written) and the rollups folded (what the relay does every
   few seconds).
3. Each command, ``--runs`` times after a warm-up, one request at a time: p50 and p95 in ms.
   exportevents is timed until its last byte (10,000 rows).

``--keep`` keeps the PostgreSQL database (its name is printed); ``--reuse NAME`` times again
against a kept one without seeding. The machine's load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bench.children import spawn, tail, terminate
from bench.relay_target import DEFAULT_PG_ADMIN_URL, free_port, require_loopback

DAY = 86400
EVENT_COLUMNS = (
    "created_at",
    "user_id",
    "domain_id",
    "message_id",
    "recipient",
    "event",
    "smtp_code",
    "smtp_response",
    "data",
)
MESSAGE_COLUMNS = (
    "id",
    "user_id",
    "domain_id",
    "source",
    "mail_from",
    "header_from",
    "subject",
    "message_id_header",
    "client_ip",
    "size",
    "created_at",
)
RECIPIENT_COLUMNS = (
    "message_id",
    "rcpt",
    "rcpt_domain",
    "state",
    "attempts",
    "next_attempt_at",
    "last_code",
    "last_response",
    "created_at",
    "updated_at",
)
BIG_RCPT_DOMAINS = (
    ("gmail.com", 30),
    ("yahoo.com", 12),
    ("outlook.com", 10),
    ("hotmail.com", 7),
    ("icloud.com", 5),
    ("aol.com", 2),
    ("gmx.de", 2),
    ("web.de", 2),
    ("comcast.net", 1.5),
    ("yandex.ru", 1.5),
)
TAIL_RCPT_DOMAINS = 1000  # company domains sharing what the big ones leave
SUBJECTS = (
    "Your order #{n} has shipped",
    "Receipt for your payment {n}",
    "Reset your password",
    "Welcome to Apex",
    "Your invoice {n} is ready",
    "Confirm your email address",
    "Your weekly summary",
    "Security alert: new sign-in",
)
TAGS = ("welcome", "receipt", "invoice", "password", "shipping", "alert", "digest", "promo")


PASSWORD = "bench-events-password"


@dataclass
class Account:
    user_id: int
    auth: dict[str, Any]  # {"APIKey": ...} or {"SessionID": ...}
    domains: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Seeded:
    """What the timed requests ask about."""

    user: Account
    domain_id: int
    sender_key: str
    admin_key: str
    message_id: str = ""
    message_header: str = ""
    recipient: str = ""
    counts: dict[str, int] = field(default_factory=dict)


# -- the event history ----------------------------------------------------------------------------


class History:
    """Messages, recipients and events in time order, day by day."""

    def __init__(
        self, rng: random.Random, domains: list[tuple[int, int, str, float]], now: float
    ) -> None:
        self.rng = rng
        self.domains = domains  # (user_id, domain_id, name, weight)
        self.weights = [d[3] for d in domains]
        self.now = now
        tail = (100 - sum(w for _, w in BIG_RCPT_DOMAINS)) / TAIL_RCPT_DOMAINS
        self.rcpt_domains = [d for d, _ in BIG_RCPT_DOMAINS] + [
            f"company{i}.example" for i in range(TAIL_RCPT_DOMAINS)
        ]
        self.rcpt_weights = [w for _, w in BIG_RCPT_DOMAINS] + [tail] * TAIL_RCPT_DOMAINS
        self.sample: dict[int, tuple[str, str, str]] = {}  # domain_id -> (queue id, header, rcpt)

    def message(self, t: float) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[Any]]:
        rng = self.rng
        user_id, domain_id, name, _ = rng.choices(self.domains, self.weights)[0]
        mid = uuid.UUID(int=rng.getrandbits(128)).hex
        header = f"<{mid}@{name}>"
        subject = rng.choice(SUBJECTS).format(n=rng.randrange(100000, 999999))
        sender = f"noreply@{name}"
        msg = (
            mid,
            user_id,
            domain_id,
            "smtp",
            sender,
            sender,
            subject,
            header,
            "10.0.0.7",
            4000,
            t,
        )
        tags = rng.sample(TAGS, rng.randint(1, 2)) if rng.random() < 0.2 else None
        n_rcpt = 1 if rng.random() < 0.9 else rng.randint(2, 3)
        rcpts: list[tuple[Any, ...]] = []
        evs: list[Any] = []

        def ev(
            at: float, rcpt: str, event: str, code: int | None, resp: str | None, data: Any
        ) -> None:
            evs.append((min(at, self.now), user_id, domain_id, mid, rcpt, event, code, resp, data))

        for _ in range(n_rcpt):
            rdom = rng.choices(self.rcpt_domains, self.rcpt_weights)[0]
            rcpt = f"user{rng.randrange(3_000_000)}@{rdom}"
            if rng.random() < 0.01:
                # Refused at RCPT: an event without a message.
                evs.append(
                    (
                        t,
                        user_id,
                        domain_id,
                        None,
                        rcpt,
                        "rejected",
                        550,
                        "550 5.7.1 Recipient is on the suppression list",
                        None,
                    )
                )
                continue
            ev(t, rcpt, "accepted", 250, None, json.dumps({"tags": tags}) if tags else None)
            roll = rng.random()
            at, attempt = t, 1
            if roll < 0.05:
                retries = 3 if roll < 0.004 else 1
                for _ in range(retries):
                    at += rng.uniform(1, 60)
                    nxt = at + 60 * 2 ** (attempt - 1)
                    data = (
                        f'{{"attempt": {attempt}, "seconds": {rng.uniform(0.5, 30):.3f}, '
                        f'"stage": "RCPT", "server_id": 1, "server": "smarthost", '
                        f'"next_attempt_at": {nxt:.3f}}}'
                    )
                    ev(at, rcpt, "deferred", 421, "421 4.7.0 Try again later", data)
                    at, attempt = nxt, attempt + 1
            secs = rng.lognormvariate(0, 1.2)
            data = (
                f'{{"attempt": {attempt}, "seconds": {secs:.3f}, "stage": "DATA", '
                f'"server_id": 1, "server": "smarthost"}}'
            )
            at += secs
            if roll < 0.004:
                ev(at, rcpt, "failed", 421, "421 4.7.0 Try again later", data)
                state = "failed"
            elif roll < 0.024:
                ev(at, rcpt, "bounced", 550, "550 5.1.1 The email account does not exist", data)
                state = "bounced"
            else:
                ev(at, rcpt, "delivered", 250, f"250 2.0.0 OK {int(at)} {mid[:12]} - gsmtp", data)
                state = "delivered"
                self._engagement(ev, rcpt, at)
            rcpts.append((mid, rcpt, rdom, state, attempt, at, evs[-1][6], evs[-1][7], t, at))
            self.sample.setdefault(domain_id, (mid, header, rcpt))
        return msg, rcpts, evs

    def _engagement(self, ev: Any, rcpt: str, at: float) -> None:
        rng = self.rng
        if rng.random() < 0.08:
            # A link scanner opens and clicks within seconds of delivery.
            ev(at + rng.uniform(1, 5), rcpt, "opened", None, None, '{"machine": true}')
            ev(at + rng.uniform(1, 5), rcpt, "clicked", None, None, '{"machine": true}')
        if rng.random() < 0.35:
            opened = at + rng.expovariate(1 / 7200)
            for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 4)):
                ev(opened, rcpt, "opened", None, None, '{"ip": "198.51.100.7"}')
                opened += rng.expovariate(1 / 36000)
            if rng.random() < 0.25:
                url = '{"URL": "https://apex.example/orders"}'
                ev(opened + rng.uniform(2, 120), rcpt, "clicked", None, None, url)
            if rng.random() < 0.01:
                ev(opened + 30, rcpt, "unsubscribed", None, None, None)
        if rng.random() < 0.0005:
            ev(at + 86400 * rng.random(), rcpt, "complained", None, None, None)

    def days(self, total: int, start: float) -> Iterator[tuple[list[Any], list[Any], list[Any]]]:
        """Batches of (messages, recipients, events), one per day, until ``total`` events."""
        per_message = 2.75
        step = (self.now - start) / (total / per_message)
        t, written = start, 0
        while written < total:
            day_end = (int(t // DAY) + 1) * DAY
            msgs: list[Any] = []
            rcpts: list[Any] = []
            evs: list[Any] = []
            while t < day_end and written + len(evs) < total:
                m, r, e = self.message(t)
                msgs.append(m)
                rcpts.extend(r)
                evs.extend(e)
                t += self.rng.expovariate(1 / step)
            evs = evs[: total - written]
            evs.sort(key=lambda e: e[0])
            written += len(evs)
            yield msgs, rcpts, evs


# -- the relay and its database ----------------------------------------------------------------


class Target:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.admin_key = "adm_bench_" + secrets.token_urlsafe(24)
        self.admin_port = free_port()
        self.log_path = root / "relay.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.pg_database: str | None = args.reuse

    @property
    def postgres(self) -> bool:
        return self.args.database == "postgres"

    @property
    def sqlite_path(self) -> Path:
        return Path(self.args.sqlite_path or self.root / "relay.sqlite3").resolve()

    def url(self, driver: bool = True) -> str:
        if not self.postgres:
            return f"sqlite+aiosqlite:///{self.sqlite_path}"
        parts = urlsplit(self.args.pg_admin_url)
        scheme = "postgresql+asyncpg" if driver else "postgresql"
        return urlunsplit((scheme, parts.netloc, f"/{self.pg_database}", "", ""))

    async def create(self) -> None:
        from relay.store import migrate
        from relay.store.db import Database

        if self.postgres and not self.pg_database:
            import asyncpg

            require_loopback(urlsplit(self.args.pg_admin_url).hostname, "--pg-admin-url")
            self.pg_database = f"relay_bench_events_{uuid.uuid4().hex[:8]}"
            conn = await asyncpg.connect(self.args.pg_admin_url)
            try:
                await conn.execute(f'CREATE DATABASE "{self.pg_database}"')
            finally:
                await conn.close()
        db = Database(self.url())
        try:
            await migrate.upgrade(db)
        finally:
            await db.close()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            RELAY_DATA_DIR=str(self.root / "data"),
            RELAY_DATABASE_URL=self.url(),
            RELAY_SMTP_LISTEN=f"127.0.0.1:{free_port()}",
            RELAY_SMTPS_LISTEN=f"127.0.0.1:{free_port()}",
            RELAY_ADMIN_LISTEN=f"127.0.0.1:{self.admin_port}",
            RELAY_TRACKING_LISTEN=f"127.0.0.1:{free_port()}",
            RELAY_ADMIN_API_KEY=self.admin_key,
            RELAY_HOSTNAME="relay.bench.test",
            RELAY_LOG_FORMAT="json",
            RELAY_DNS_NAMESERVERS=f"127.0.0.1:{free_port()}",
            RELAY_DELIVERY_ENABLED="false",
            RELAY_SMTP_PROCESSES="1",
            # The timed requests come from one client faster than the v1 routes' limit.
            RELAY_ADMIN_RATE_LIMIT_REQUESTS="1000000",
            RELAY_EVENTS_RETENTION_DAYS="0",
        )
        return env

    async def start(self) -> None:
        self.proc = await spawn(
            [sys.executable, "-m", "relay", "serve"],
            log_path=self.log_path,
            env=self.env(),
            pipes=False,
        )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"relay serve exited:\n{tail(self.log_path)}")
                try:
                    url = f"http://127.0.0.1:{self.admin_port}/readyz"
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"relay not ready:\n{tail(self.log_path)}")

    async def stop(self) -> None:
        if self.proc is not None:
            await terminate(self.proc, 30)
        if self.postgres and self.pg_database and not (self.args.keep or self.args.reuse):
            import asyncpg

            conn = await asyncpg.connect(self.args.pg_admin_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')
            finally:
                await conn.close()


class Api:
    def __init__(self, http: aiohttp.ClientSession, port: int, admin_key: str) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}"
        self.admin_key = admin_key

    async def call(self, command: str, *, admin: bool = False, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"Command": command, **params}
        if admin:
            body["AdminAPIKey"] = self.admin_key
        async with self.http.post(f"{self.base}/api.php", json=body) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
        if not data.get("Success"):
            raise RuntimeError(f"{command}: {data}")
        return data


async def make_accounts(api: Api) -> list[Account]:
    accounts = []
    for u in range(5):
        user = await api.call(
            "user.create", admin=True, EmailAddress=f"owner{u}@bench.example", Password=PASSWORD
        )
        acct = Account(int(user["UserID"]), {"APIKey": str(user["APIKey"])})
        for d in range(3 if u == 0 else 4 + (u == 4)):
            name = f"mail{d}.customer{u}.example"
            res = await api.call("emailgateway.adddomain", **acct.auth, DomainName=name)
            domain_id = int(res["NewSenderDomainID"])
            await api.call(
                "emailgateway.setdomainstatus", admin=True, DomainID=domain_id, Status="Enabled"
            )
            acct.domains.append((domain_id, name))
        accounts.append(acct)
    return accounts


async def seed(target: Target, accounts: list[Account], args: argparse.Namespace) -> Seeded:
    from relay.store import eventlog, rollups
    from relay.store.db import Database

    now = time.time()
    start = now - args.days * DAY
    queried = accounts[0].domains[0][0]
    others = [(a.user_id, d, n) for a in accounts for d, n in a.domains if d != queried]
    share = args.domain_share
    domains = [(accounts[0].user_id, queried, accounts[0].domains[0][1], share)]
    domains += [(u, d, n, (1 - share) / len(others)) for u, d, n in others]
    history = History(random.Random(args.seed), domains, now)
    db = Database(target.url())
    await eventlog.ensure_partitions(db, eventlog.day_of(start) - 1, eventlog.day_of(now) + 7)
    written = 0
    t0 = time.monotonic()
    if target.postgres:
        import asyncpg

        conn = await asyncpg.connect(target.url(driver=False))
        try:
            for msgs, rcpts, evs in history.days(args.events, start):
                await conn.copy_records_to_table("messages", records=msgs, columns=MESSAGE_COLUMNS)
                await conn.copy_records_to_table(
                    "recipients", records=rcpts, columns=RECIPIENT_COLUMNS
                )
                for i in range(0, len(evs), args.copy_rows):
                    await conn.copy_records_to_table(
                        "events", records=evs[i : i + args.copy_rows], columns=EVENT_COLUMNS
                    )
                written += len(evs)
                progress(written, args.events, t0)
            print("\nfold, vacuum analyze ...", flush=True)
            await eventlog.fold_rollups(db)
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()
    else:
        import sqlite3

        conn3 = sqlite3.connect(target.sqlite_path, isolation_level=None)
        try:
            marks = ",".join("?" * len(EVENT_COLUMNS))
            for msgs, rcpts, evs in history.days(args.events, start):
                conn3.execute("BEGIN")
                conn3.executemany(
                    f"INSERT INTO messages ({','.join(MESSAGE_COLUMNS)}) VALUES "
                    f"({','.join('?' * len(MESSAGE_COLUMNS))})",
                    msgs,
                )
                conn3.executemany(
                    f"INSERT INTO recipients ({','.join(RECIPIENT_COLUMNS)}) VALUES "
                    f"({','.join('?' * len(RECIPIENT_COLUMNS))})",
                    rcpts,
                )
                conn3.executemany(
                    f"INSERT INTO events ({','.join(EVENT_COLUMNS)}) VALUES ({marks})", evs
                )
                rollups.fold_sqlite(conn3)  # as the relay's writers do before they commit
                conn3.execute("COMMIT")
                written += len(evs)
                progress(written, args.events, t0)
            print("\nanalyze ...", flush=True)
            conn3.execute("ANALYZE")
        finally:
            conn3.close()
    await eventlog.fold_rollups(db)
    async with db.read() as c:
        rows = await c.exec_driver_sql(
            "SELECT domain_id, sum(n) FROM event_counts GROUP BY domain_id"
        )
        found: list[Any] = list(rows.all())
        per_domain = {int(r[0]): int(r[1]) for r in found}
    await db.close()
    print(
        f"seeded {written:,} events in {time.monotonic() - t0:.0f} s; "
        f"queried domain: {per_domain.get(queried, 0):,}",
        flush=True,
    )
    sample = history.sample[queried]
    return Seeded(
        user=accounts[0],
        domain_id=queried,
        sender_key="",
        admin_key=target.admin_key,
        message_id=sample[0],
        message_header=sample[1],
        recipient=sample[2],
        counts={"total": sum(per_domain.values()), "domain": per_domain.get(queried, 0)},
    )


def progress(done: int, total: int, t0: float) -> None:
    rate = done / max(time.monotonic() - t0, 1e-9)
    print(f"\r  {done:,} / {total:,} events ({rate:,.0f}/s)", end="", flush=True)


# -- the timed requests ------------------------------------------------------------------------


def commands(s: Seeded) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, kind, params): kind "api" = /api.php POST, "v1" = GET /api/v1/events,
    "csv" = exportevents GET read to the end."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    month_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 30 * DAY))
    week_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 7 * DAY))
    user = dict(s.user.auth)
    dom = {**user, "DomainID": s.domain_id}
    page = {"StartFrom": 0, "RetrieveCount": 100}
    period = {"StartDate": month_ago, "EndDate": today}
    now = int(time.time())
    return [
        ("getevents domain", "api", {"Command": "emailgateway.getevents", **dom, **page}),
        (
            "getevents domain 30 days",
            "api",
            {"Command": "emailgateway.getevents", **dom, **page, **period},
        ),
        (
            "getevents Event=bounce",
            "api",
            {"Command": "emailgateway.getevents", **dom, **page, "Event": "bounce"},
        ),
        (
            "getevents Event=complaint",
            "api",
            {"Command": "emailgateway.getevents", **dom, **page, "Event": "complaint"},
        ),
        (
            "getevents all domains",
            "api",
            {"Command": "emailgateway.getevents", **user, **page, **period},
        ),
        (
            "getevents StartFrom=5000",
            "api",
            {"Command": "emailgateway.getevents", **dom, "StartFrom": 5000, "RetrieveCount": 100},
        ),
        (
            "getevents Query=<recipient>",
            "api",
            {"Command": "emailgateway.getevents", **dom, **page, "Query": s.recipient},
        ),
        (
            "getevents Query=<recipient>, 7 days",
            "api",
            {
                "Command": "emailgateway.getevents",
                **dom,
                **page,
                "Query": s.recipient,
                "StartDate": week_ago,
                "EndDate": today,
            },
        ),
        (
            "getevents Query=<subject words>",
            "api",
            {"Command": "emailgateway.getevents", **dom, **page, "Query": "has shipped"},
        ),
        (
            "getevents MessageID=<queue id>",
            "api",
            {"Command": "emailgateway.getevents", **dom, **page, "MessageID": s.message_id},
        ),
        (
            "getevents admin, every account",
            "api",
            {"Command": "emailgateway.getevents", "AdminAPIKey": s.admin_key, **page},
        ),
        ("v1 events", "v1", {}),
        ("v1 events Event=bounced", "v1", {"Event": "bounced", "RetrieveCount": "100"}),
        (
            "v1 events StartDate..EndDate",
            "v1",
            {"StartDate": str(now - 10 * DAY - 3600), "EndDate": str(now - 3 * DAY + 1234)},
        ),
        ("v1 events MessageID", "v1", {"MessageID": s.message_header}),
        ("aggrevents event", "api", {"Command": "emailgateway.aggrevents", **dom, **period}),
        (
            "aggrevents recipient-domain",
            "api",
            {
                "Command": "emailgateway.aggrevents",
                **dom,
                **period,
                "AggregatedField": "recipient-domain",
            },
        ),
        (
            "aggrevents smtp-code",
            "api",
            {"Command": "emailgateway.aggrevents", **dom, **period, "AggregatedField": "smtp-code"},
        ),
        ("domainstats", "api", {"Command": "emailgateway.domainstats", **dom}),
        ("accountstats", "api", {"Command": "emailgateway.accountstats", **user}),
        (
            "recipientdomainstats",
            "api",
            {
                "Command": "emailgateway.recipientdomainstats",
                **dom,
                "RecipientToDomain": "gmail.com",
            },
        ),
        ("listrecipientdomains", "api", {"Command": "emailgateway.listrecipientdomains", **dom}),
        (
            "getdomains WithCounts",
            "api",
            {"Command": "emailgateway.getdomains", **user, "WithCounts": 1},
        ),
        (
            "getmessage",
            "api",
            {"Command": "emailgateway.getmessage", **user, "MessageID": s.message_id},
        ),
        ("exportevents 10,000 rows", "csv", {"Command": "emailgateway.exportevents", **dom}),
    ]


async def time_one(
    http: aiohttp.ClientSession, base: str, s: Seeded, kind: str, params: dict[str, Any]
) -> tuple[float, str]:
    t0 = time.perf_counter()
    if kind == "api":
        async with http.post(f"{base}/api.php", json=params) as resp:
            body = await resp.read()
            note = "" if b'"Success":true' in body else body[:200].decode(errors="replace")
    elif kind == "v1":
        headers = {"Authorization": f"Bearer {s.sender_key}"}
        async with http.get(f"{base}/api/v1/events", params=params, headers=headers) as resp:
            body = await resp.read()
            note = "" if resp.status == 200 else body[:200].decode(errors="replace")
    else:
        query = {k: str(v) for k, v in params.items()}
        async with http.get(f"{base}/api.php", params=query) as resp:
            body = await resp.read()
            rows = body.count(b"\r\n") - 1
            note = "" if resp.status == 200 and rows == 10_000 else f"{resp.status}, {rows} rows"
    return (time.perf_counter() - t0) * 1000, note


def target_ms(command: str, args: argparse.Namespace) -> float:
    return args.export_target_ms if command.startswith("exportevents") else args.target_ms


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value at least p % of the values are no greater than."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]


async def run_timings(
    port: int, s: Seeded, runs: int, warmup: int, only: list[str]
) -> list[dict[str, Any]]:
    base = f"http://127.0.0.1:{port}"
    out = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for label, kind, params in commands(s):
            if only and not any(o in label for o in only):
                continue
            for _ in range(warmup):
                await time_one(http, base, s, kind, params)
            times, notes = [], set()
            for _ in range(runs):
                ms, note = await time_one(http, base, s, kind, params)
                times.append(ms)
                if note:
                    notes.add(note)
            p50, p95 = statistics.median(times), percentile(times, 95)
            out.append(
                {
                    "command": label,
                    "p50": p50,
                    "p95": p95,
                    "max": max(times),
                    "notes": sorted(notes),
                }
            )
            print(
                f"  {label:34} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms"
                + (f"   !! {sorted(notes)[0]}" if notes else ""),
                flush=True,
            )
    return out


async def amain(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="events-scale-") as tmp:
        target = Target(args, Path(tmp))
        try:
            await target.create()
            await target.start()
            async with aiohttp.ClientSession() as http:
                api = Api(http, target.admin_port, target.admin_key)
                if args.reuse:
                    s = await reuse(api, target)
                else:
                    accounts = await make_accounts(api)
                    s = await seed(target, accounts, args)
                res = await api.call(
                    "emailgateway.addapi",
                    **s.user.auth,
                    DomainID=s.domain_id,
                    Description="bench",
                )
                s.sender_key = str(res["APIKey"]["APIKey"])
            load = os.getloadavg()
            print(
                f"\n{args.database}: timing {args.runs} runs per command "
                f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
                f"{os.cpu_count()} cores)",
                flush=True,
            )
            results = await run_timings(target.admin_port, s, args.runs, args.warmup, args.only)
            load = os.getloadavg()
            print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            if args.keep and target.pg_database:
                print(f"kept database {target.pg_database} (--reuse {target.pg_database})")
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}))
            slow = [r["command"] for r in results if r["p95"] > target_ms(r["command"], args)]
            failed = [r["command"] for r in results if r["notes"]]
            print(
                f"over target at p95 ({args.target_ms:.0f} ms; the export: "
                f"{args.export_target_ms:.0f} ms): {', '.join(slow) or 'none'}"
            )
            return 1 if failed else 0
        finally:
            await target.stop()


async def reuse(api: Api, target: Target) -> Seeded:
    """The accounts and samples of a database seeded by an earlier run (--keep)."""
    import asyncpg

    conn = await asyncpg.connect(target.url(driver=False))
    try:
        user = await conn.fetchrow("SELECT id, email FROM users ORDER BY id LIMIT 1")
        domain = await conn.fetchrow(
            "SELECT id FROM gateway_domains WHERE user_id = $1 ORDER BY id LIMIT 1", user["id"]
        )
        msg = await conn.fetchrow(
            "SELECT m.id, m.message_id_header, r.rcpt FROM messages m "
            "JOIN recipients r ON r.message_id = m.id WHERE m.domain_id = $1 LIMIT 1",
            domain["id"],
        )
    finally:
        await conn.close()
    # The APIKey was shown once; the seeded users have a password.
    res = await api.call("user.login", EmailAddress=user["email"], Password=PASSWORD)
    return Seeded(
        user=Account(int(user["id"]), {"SessionID": str(res["SessionID"])}),
        domain_id=int(domain["id"]),
        sender_key="",
        admin_key=target.admin_key,
        message_id=str(msg["id"]),
        message_header=str(msg["message_id_header"]),
        recipient=str(msg["rcpt"]),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--domain-share", type=float, default=0.1)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--target-ms", type=float, default=200.0, help="p95 target per command")
    p.add_argument("--export-target-ms", type=float, default=1000.0, help="the export's")
    p.add_argument("--copy-rows", type=int, default=100_000, help="events per COPY statement")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    p.add_argument("--sqlite-path", default="")
    p.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    p.add_argument("--reuse", default=None, help="time against a kept PostgreSQL database")
    p.add_argument("--json", default="", help="also write the figures to this file")
    p.add_argument(
        "--only", action="append", default=[], help="time only commands whose label has this"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

"""``relay queue list | show | retry | hold | release | delete``: the queue from the command line,
like Postfix's ``postqueue -p``, ``postcat -q``, ``postqueue -f``, ``postsuper -h/-H/-d``
(docs/operations.md "Queue").

The commands talk to the database directly (relay/queue/control.py, short transactions of
their own), so they work whether the relay runs or not, on both backends, without taking a
recipient from under a running delivery. Results go to standard output (``--json``: JSON);
each change is also logged (standard error, the relay's log format) with who made it: the
operating-system user running the command, and the ``sudo`` user behind it if any.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import pwd
import re
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.config import Settings
    from relay.queue.control import Changed, Entry, Selection
    from relay.store.db import Database

CHANGES = ("retry", "hold", "release", "delete")
STATES = ("queued", "scheduled", "deferred", "held")  # relay.queue.model.SHOWN_STATES
PAGE = 500
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def age(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``3d``, ``1w`` as seconds."""
    m = _AGE.match(text.lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (e.g. 90s, 30m, 2h, 3d, 1w)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def add_parser(sub: Any) -> None:
    """``relay queue ...`` under the main parser's subcommands."""
    queue = sub.add_parser("queue", help="list, show, retry, hold, release or delete queued mail")
    commands = queue.add_subparsers(dest="queue_cmd", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="TOML file (default: $RELAY_CONFIG)")
        p.add_argument("--json", action="store_true", help="print JSON")

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--sender-domain", metavar="DOMAIN", help="sent for this sender domain")
        p.add_argument("--recipient-domain", metavar="DOMAIN", help="to this recipient domain")
        p.add_argument("--state", choices=STATES, help="in this state")
        p.add_argument(
            "--older-than", type=age, metavar="AGE", help="accepted longer ago (90s, 30m, 2h, 3d)"
        )

    lister = commands.add_parser(
        "list", help="recipients waiting for delivery or held (like postqueue -p)"
    )
    common(lister)
    filters(lister)
    lister.add_argument("--limit", type=int, metavar="N", help="at most N recipients")
    shower = commands.add_parser(
        "show", help="a message: headers, recipients, every event (like postcat -q)"
    )
    common(shower)
    shower.add_argument("message", metavar="ID", help="queue id or Message-ID header")
    helps = {
        "retry": "make deferred recipients due now (like postqueue -f / -i ID)",
        "hold": "put recipients on hold: not delivered until released (like postsuper -h)",
        "release": "release held recipients (like postsuper -H)",
        "delete": "give up on recipients: failed, reason deleted (like postsuper -d)",
    }
    for name in CHANGES:
        p = commands.add_parser(name, help=helps[name])
        common(p)
        filters(p)
        p.add_argument("ids", nargs="*", metavar="ID", help="queue ids")
        p.add_argument(
            "--all", action="store_true", help="every recipient the filters select (no ID)"
        )


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(settings, args))
    except _Refused as exc:
        print(f"relay queue {args.queue_cmd}: {exc}", file=sys.stderr)
        return 2


class _Refused(Exception):
    """Bad usage, or a database the command cannot work with (exit 2)."""


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from relay import log as relay_log
    from relay.diagnose import describe_database
    from relay.queue.control import SelectionError
    from relay.store.db import Database

    # Other processes (relay serve's tree) write the same SQLite file: queue on its lock.
    db = Database(settings.database_url, process_lock=True)
    try:
        await _check_schema(db, settings)
        # After the check: the schema tools' own chatter is not this command's log.
        relay_log.configure(settings.log.format, settings.log.level)
        if args.queue_cmd == "show":
            return await _show(db, args)
        sel = _selection(args)
        if args.queue_cmd == "list":
            return await _list(db, sel, args)
        return await _change(db, sel, args)
    except SelectionError as exc:
        raise _Refused(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:
        # Unreachable, or locked past the busy timeout: one line, no traceback.
        raise _Refused(describe_database(exc, settings.database_url)) from None
    finally:
        await db.close()


async def _check_schema(db: Database, settings: Settings) -> None:
    from relay.diagnose import describe_database
    from relay.store.migrate import current_revision, head_revision

    try:
        current = await current_revision(db)
    except Exception as exc:
        raise _Refused(describe_database(exc, settings.database_url)) from None
    if current is None:
        raise _Refused("the database has no queue yet: start the relay, or run `relay migrate`")
    if current != head_revision():
        raise _Refused(
            f"database schema is at {current}, this version needs {head_revision()}: "
            "run `relay migrate` first"
        )


def _selection(args: argparse.Namespace) -> Selection:
    from relay.queue.control import Selection

    ids: list[str] = getattr(args, "ids", [])
    everything: bool = getattr(args, "all", False)
    if ids and everything:
        raise _Refused("name queue ids or --all, not both")
    sel = Selection(
        message_ids=tuple(dict.fromkeys(ids)),
        sender_domain=args.sender_domain,
        recipient_domain=args.recipient_domain,
        state=args.state,
        older_than=args.older_than,
        everything=everything or args.queue_cmd == "list",
    )
    if not sel.names_something:
        raise _Refused("name queue ids, or select with --all and/or filters")
    return sel


# -- list ----------------------------------------------------------------------------------------


async def _list(db: Database, sel: Selection, args: argparse.Namespace) -> int:
    from relay.queue import control

    limit = args.limit
    if limit is not None and limit < 1:
        raise _Refused("--limit must be 1 or more")
    shown: dict[str, int] = {}
    after: str | None = None
    first = True
    out = sys.stdout
    if args.json:
        out.write("[")
    while True:
        room = PAGE if limit is None else min(PAGE, limit - sum(shown.values()))
        page = await control.list_queue(db, sel, after=after, limit=room)
        if args.json:
            for entry in page.entries:
                out.write(("\n" if first else ",\n") + json.dumps(entry.view()))
                first = False
        else:
            _print_entries(page.entries, header=first)
            first = first and not page.entries
        for entry in page.entries:
            shown[entry.state] = shown.get(entry.state, 0) + 1
        after = page.after
        if after is None or (limit is not None and sum(shown.values()) >= limit):
            break
    if args.json:
        out.write("\n]\n" if not first else "]\n")
    else:
        print(_summary(shown, sel.filtered, more=after is not None))
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_entries(entries: list[Entry], *, header: bool) -> None:
    rows = [
        (
            e.queue_id,
            e.state + ("*" if e.in_delivery else ""),
            str(e.attempts),
            _when(e.next_attempt_at),
            e.recipient,
            e.last_response,
        )
        for e in entries
    ]
    if header and rows:
        rows.insert(0, ("QUEUE ID", "STATE", "TRIES", "NEXT ATTEMPT (UTC)", "RECIPIENT", "LAST"))
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) if i != 2 else row[i].rjust(widths[i]) for i in range(5)]
        print("  ".join([*cells, row[5]]).rstrip())


def _summary(shown: dict[str, int], filtered: bool, *, more: bool) -> str:
    total = sum(shown.values())
    if not total:
        return "No recipient matches." if filtered else "The queue is empty."
    parts = ", ".join(f"{shown[s]} {s}" for s in STATES if s in shown)
    noun = "recipient" if total == 1 else "recipients"
    tail = " (more not shown: --limit)" if more else ""
    return f"-- {total} {noun}: {parts}{tail}"


# -- show ----------------------------------------------------------------------------------------


async def _show(db: Database, args: argparse.Namespace) -> int:
    from relay.admin.commands.events import MESSAGE_LIMIT, message_view
    from relay.store.repos import events as repo

    async with db.read() as conn:
        found = await repo.find_messages(conn, args.message, None, MESSAGE_LIMIT)
        ids = [m.id for m in found]
        recipients = await repo.recipients_of(conn, ids) if ids else []
        evs = await repo.events_of(conn, ids) if ids else []
    if not found:
        print(f"relay queue show: no such message: {args.message}", file=sys.stderr)
        return 1
    views = [message_view(m, recipients, evs, True) for m in found]
    if args.json:
        print(json.dumps({"Messages": views}, indent=2, ensure_ascii=False))
        return 0
    for number, view in enumerate(views):
        if number:
            print()
        _print_message(view)
    return 0


def _print_message(v: dict[str, Any]) -> None:
    def field(name: str, value: Any) -> None:
        print(f"{name + ':':<14}{value}")

    field("Queue ID", v["MessageID"])
    field("Accepted", f"{_when(v['CreatedAt'])} UTC over {v['Source']} from {v['ClientIP']}")
    if v["ScheduledAt"] is not None:
        field("Scheduled", f"{_when(v['ScheduledAt'])} UTC")
    field("Account", f"user {v['UserID']}, sender domain {v['SenderDomain']} ({v['DomainID']})")
    field("Sender", f"<{v['MailFrom']}>, {v['Size']} bytes")
    print(
        "Headers:" if v["Headers"] else "Headers:      (no longer stored: every recipient is final)"
    )
    for h in v["Headers"]:
        value = " ".join(h["Value"].split())  # unfolded: one line each
        print(f"    {h['Name']}: {value}")
    print("Recipients:")
    width = max((len(r["Recipient"]) for r in v["Recipients"]), default=0)
    for r in v["Recipients"]:
        nxt = f"next {_when(r['NextAttemptAt'])}" if r["NextAttemptAt"] is not None else ""
        tries = f"{r['Attempts']} attempt" + ("" if r["Attempts"] == 1 else "s")
        line = f"    {r['Recipient']:<{width}}  {r['State']:<9}  {tries}  {nxt}"
        if r["LastResponse"]:
            line = f"{line.rstrip()}  last: {r['LastResponse']}"
        print(line.rstrip())
    print("Events:")
    for e in v["Events"]:
        status = e["delivery-status"]
        detail = " ".join(f"{k}={val}" for k, val in _event_details(e["data"]))
        reply = status["message"] or ""
        when, recipient = _when(e["timestamp"]), e["recipient"] or ""
        print(f"    {when}  {e['event']:<10} {recipient}  {reply}  {detail}".rstrip())


def _event_details(data: Any) -> Iterable[tuple[str, Any]]:
    if not isinstance(data, dict):
        return []
    keep = ("server", "attempt", "reason", "by", "stage")
    return [(k, data[k]) for k in keep if k in data]


# -- changes -------------------------------------------------------------------------------------


async def _change(db: Database, sel: Selection, args: argparse.Namespace) -> int:
    from relay.queue import control

    by = actor()
    action = args.queue_cmd
    operations: dict[str, Callable[..., Any]] = {
        "retry": control.retry,
        "hold": control.hold,
        "release": control.release,
    }
    if action == "delete":
        changed = await control.delete(db, sel, actor=by)
    else:
        changed = await operations[action](db, sel)
    control.log_change(action, changed, sel, by=by, via="cli")
    if args.json:
        print(json.dumps(changed.view()))
    else:
        print(_said(action, changed))
    for unknown in changed.unknown:
        print(f"relay queue {action}: no such message: {unknown}", file=sys.stderr)
    return 1 if changed.unknown else 0


def actor() -> str:
    """Who runs this command: ``cli:<user>`` (the user id's name, not $USER), with the user
    ``sudo`` ran it for."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"cli:{name}" + (f" (sudo from {sudo})" if sudo and sudo != name else "")


_DONE = {
    "retry": "due now",
    "hold": "held",
    "release": "released",
    "delete": "deleted",
}


def _said(action: str, changed: Changed) -> str:
    recipients, messages = (
        _count(changed.recipients, "recipient"),
        _count(len(changed.messages), "message"),
    )
    text = f"{action}: {recipients} of {messages} {_DONE[action]}"
    busy = changed.busy
    if busy:
        being = f"{_count(busy, 'recipient')} being delivered right now"
        text += {
            "retry": f"; {being}: left to that attempt",
            "hold": f" ({being}: the attempt finishes; if it does not deliver, it stays held)",
            "release": "",
            "delete": f"; {being}: held instead, run delete again once the attempt is over",
        }[action]
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")

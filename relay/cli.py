"""``relay serve | migrate | check-config | queue | pmta-accounting | pmta-sync``,
``relay --version``: see docs/operations.md."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import signal
import sys

from relay import config, queuecli


def _load(path: str | None) -> config.Settings:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print("configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


async def _migrate(settings: config.Settings) -> str:
    from relay.store.db import Database
    from relay.store.migrate import current_revision, upgrade

    db = Database(settings.database_url)
    try:
        await upgrade(db)
        return await current_revision(db) or ""
    finally:
        await db.close()


def version() -> str:
    try:
        return importlib.metadata.version("relay")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover (not installed)
        return "unknown"


async def _check_network(settings: config.Settings) -> tuple[list[str], list[str]]:
    """Listeners free to bind, database and Redis answering: (problems, notes)."""
    from relay import diagnose

    problems, notes = diagnose.check_listeners(settings)
    checks = [diagnose.check_database(settings.database_url)]
    if settings.redis.url:
        checks.append(diagnose.check_redis(settings.redis.url))
    problems += [p for p in await asyncio.gather(*checks) if p]
    return problems, notes


def _check_config(settings: config.Settings, network: bool) -> int:
    problems: list[str] = []
    notes: list[str] = []
    if network:
        problems, notes = asyncio.run(_check_network(settings))
    problems += settings.unknown_env
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if problems:
        print("configuration error:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    checked = "" if network else "; ports, database and Redis not checked"
    print(f"configuration ok ({settings.source or 'defaults and environment'}{checked})")
    return 0


def main(argv: list[str] | None = None) -> int:
    # Everything the relay writes (database, keys, certificate, metrics files) is for its own
    # user only, whatever umask it was started with.
    os.umask(0o077)
    parser = argparse.ArgumentParser(prog="relay", description="SMTP relay and MTA integration")
    parser.add_argument("--version", action="version", version=f"relay {version()}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    parsers = {}
    for name, text in (
        ("serve", "run SMTP listeners, delivery workers and the admin app"),
        ("migrate", "create or upgrade the database schema"),
        ("check-config", "validate the configuration and exit 0, or print problems and exit 2"),
    ):
        p = parsers[name] = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", help="TOML file (default: $RELAY_CONFIG)")
    parsers["check-config"].add_argument(
        "--no-network",
        action="store_true",
        help="skip the checks that bind the listeners and connect to the database and Redis",
    )
    # The queue: list, show, retry, hold, release, delete (relay/queuecli.py).
    queuecli.add_parser(sub)
    # PowerMTA (mta/powermta): accounting records in, include files out.
    acct = sub.add_parser(
        "pmta-accounting",
        help="record PowerMTA accounting CSV from files or stdin (<acct-file |relay ...>)",
    )
    acct.add_argument("-c", "--config", help="TOML file (default: $RELAY_CONFIG)")
    acct.add_argument("files", nargs="*", metavar="FILE", help="CSV files (.gz too); - = stdin")
    pmta_sync = sub.add_parser(
        "pmta-sync", help="write PowerMTA's domain include files; reload PowerMTA on a change"
    )
    pmta_sync.add_argument("-c", "--config", help="TOML file (default: $RELAY_CONFIG)")
    # Worker processes of `relay serve` (smtp.processes, delivery.processes); not for direct use.
    child = sub.add_parser("worker", help="a worker process of `relay serve` (not for direct use)")
    child.add_argument("-c", "--config")
    child.add_argument("--role", choices=("smtp", "delivery"), required=True)
    child.add_argument("--ipc-fd", type=int, required=True)
    child.add_argument("--listen", action="append", default=[], help="KIND:FD")
    args = parser.parse_args(argv)
    if args.cmd in ("serve", "worker"):
        # SIGHUP reloads once the node runs (relay.server); until then it must not kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = _load(args.config)
    if args.cmd == "worker":
        from relay.procs import run_child
        from relay.server import run_async

        listen = [(k, int(fd)) for k, _, fd in (item.partition(":") for item in args.listen)]
        return run_async(settings, run_child(settings, args.role, args.ipc_fd, listen))
    if args.cmd == "queue":
        return queuecli.run(settings, args)
    if args.cmd in ("pmta-accounting", "pmta-sync"):
        return _powermta(settings, args)
    if args.cmd == "check-config":
        return _check_config(settings, network=not args.no_network)
    if args.cmd == "migrate":
        try:
            revision = asyncio.run(_migrate(settings))
        except Exception as exc:
            from relay.diagnose import describe_database

            print(
                f"migration failed: {describe_database(exc, settings.database_url)}",
                file=sys.stderr,
            )
            return 1
        print(f"schema at revision {revision}")
        return 0
    if (settings.delivery.enabled and settings.delivery.processes > 0) or (
        settings.smtp.processes > 1
    ):
        _multiprocess_metrics(settings)
    from relay.server import run

    return run(settings)


def _powermta(settings: config.Settings, args: argparse.Namespace) -> int:
    from mta.powermta import commands

    try:
        if args.cmd == "pmta-accounting":
            return commands.run(settings, commands.accounting(settings, args.files))
        return commands.run(settings, commands.sync(settings))
    except config.ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{args.cmd}: {exc}", file=sys.stderr)
        return 1


def _multiprocess_metrics(settings: config.Settings) -> None:
    """Before prometheus_client is imported: one metrics directory for this node's process
    tree, emptied at start (its files are the previous run's processes)."""
    import os
    from pathlib import Path

    directory = Path(settings.server.data_dir).resolve() / "metrics"
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


if __name__ == "__main__":
    raise SystemExit(main())

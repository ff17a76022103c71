"""What failed, in one line an operator can act on: storage and Redis errors, listener checks.

Used by `relay serve` (startup errors), `relay check-config` (reachability and port checks)
and the Redis warnings. URLs are shown without their passwords.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from relay.config import Settings, parse_hostport


class StartupError(Exception):
    """A dependency of the node refused or is missing; the message says which, in one line."""


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (SQLAlchemy's ``orig``) and what caused it, outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [getattr(item, "orig", None), item.__cause__, item.__context__]
    return seen


def reason(exc: BaseException, timeout: float | None = None) -> str:
    """The most specific cause of ``exc`` as short text (no traceback, no class paths)."""
    chain = _chain(exc)
    for item in reversed(chain):
        # The server's own words first: 'database "x" does not exist', 'role "y" does not exist'.
        if type(item).__module__.startswith("asyncpg") and str(item):
            return str(item)
    for item in chain:
        if isinstance(item, socket.gaierror):
            return f"cannot resolve the host name ({item.strerror or item})"
        if isinstance(item, TimeoutError):
            return "no answer" + (f" within {timeout:g} s" if timeout else "")
        if isinstance(item, ConnectionRefusedError):
            return "connection refused"
        if isinstance(item, OSError) and item.errno is not None:
            text = item.strerror or errno.errorcode.get(item.errno, str(item.errno))
            name = getattr(item, "filename", None)
            return f"{text.lower()}" + (f": {name}" if name else "")
    for item in reversed(chain):
        # redis-py and sqlite3 put plain text in their messages.
        text = str(item).split("\n", 1)[0].strip()
        if text:
            return text
    return type(exc).__name__


def describe_database(exc: BaseException, url: str, timeout: float | None = None) -> str:
    return f"database {redact_url(url)}: {reason(exc, timeout)}"


def describe_redis(exc: BaseException, url: str, timeout: float | None = None) -> str:
    return f"Redis {redact_url(url)}: {reason(exc, timeout)}"


# -- reachability (check-config, and the start line's Redis state) -------------------------------


async def check_database(url: str, timeout: float = 10.0) -> str | None:
    """None when the database answers; otherwise what is wrong."""
    if url.startswith("sqlite"):
        return _check_sqlite_path(url)
    from relay.store.db import Database

    db = Database(url, pool_size=1)
    try:
        await asyncio.wait_for(db.ping(), timeout)
    except Exception as exc:
        return describe_database(exc, url, timeout)
    finally:
        await db.close()
    return None


def _check_sqlite_path(url: str) -> str | None:
    """The file, or the nearest existing directory it would be created in, is writable."""
    from sqlalchemy.engine import make_url

    path = Path(make_url(url).database or "")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not os.access(probe, os.W_OK):
        return f"database {url}: {probe} is not writable by this user"
    if probe != path and not probe.is_dir():
        return f"database {url}: {probe} is not a directory"
    return None


async def check_redis(url: str, timeout: float = 5.0) -> str | None:
    """None when Redis answers PING; otherwise what is wrong."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        await asyncio.wait_for(client.ping(), timeout)
    except Exception as exc:
        return describe_redis(exc, url, timeout)
    finally:
        try:
            await client.aclose()
        except Exception:  # noqa: S110 (closing a client that never connected)
            pass
    return None


def listener_settings(settings: Settings) -> list[tuple[str, str]]:
    """Every (setting name, host:port) the node binds: each ``listen`` or ``*_listen`` setting
    of any section, so listeners added to the configuration later are covered too."""
    out: list[tuple[str, str]] = []
    for section in fields(settings):
        obj: Any = getattr(settings, section.name)
        if not hasattr(obj, "__dataclass_fields__"):
            continue
        for fld in fields(obj):
            if fld.name != "listen" and not fld.name.endswith("_listen"):
                continue
            value = getattr(obj, fld.name)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item.strip():
                    out.append((f"{section.name}.{fld.name}", item.strip()))
    return out


def check_listeners(settings: Settings) -> tuple[list[str], list[str]]:
    """Bind each listener briefly, as the relay would. Returns (problems, notes): a port in use
    or an address this host does not have is a problem; a port below 1024 that needs
    CAP_NET_BIND_SERVICE (which the systemd unit grants) is only a note."""
    problems: list[str] = []
    notes: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    for name, item in listener_settings(settings):
        try:
            host, port = parse_hostport(item)
        except ValueError:
            continue  # validate() reports the syntax
        if port == 0:
            continue
        if (host, port) in seen:
            problems.append(f"{name}: {item} is also {seen[(host, port)]}")
            continue
        seen[(host, port)] = name
        error = _try_bind(host, port)
        if error is None:
            continue
        if error.errno == errno.EACCES and port < 1024:
            notes.append(
                f"{name}: {item} not checked: ports below 1024 need CAP_NET_BIND_SERVICE "
                "(the systemd unit grants it)"
            )
        elif error.errno == errno.EADDRINUSE:
            problems.append(f"{name}: {item} is already in use")
        elif error.errno == errno.EADDRNOTAVAIL:
            problems.append(f"{name}: {item}: this host has no such address")
        else:
            problems.append(f"{name}: {item}: {reason(error)}")
    return problems, notes


def _try_bind(host: str, port: int) -> OSError | None:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return exc
    for family, kind, proto, _name, addr in infos[:1]:
        with socket.socket(family, kind, proto) as sock:
            # As the listeners bind: SO_REUSEADDR, so a port in TIME_WAIT is not "in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
                sock.listen(1)
            except OSError as exc:
                return exc
    return None

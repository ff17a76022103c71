"""Structured logging (structlog): JSON off a terminal, console on one.

Every line has one format, our events and the libraries' stdlib logging alike (structlog's
ProcessorFormatter renders both). A processor masks values under secret-looking keys, so a
password, API key or AUTH blob that ends up in an event dict never reaches the log. aiosmtpd's
own logger stays at WARNING: at INFO it logs every command line.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEYS = (
    "password",
    "passwd",
    "secret",
    "apikey",
    "api_key",
    "token",
    "authorization",
    "sessionid",
    "session_id",
    "signingkey",
    "signing_key",
    "private_key",
    "auth_data",
)
# Libraries whose INFO/DEBUG output is per operation, not per event worth an operator's time.
QUIET = {"aiosmtpd": logging.WARNING, "mail.log": logging.WARNING, "aiosqlite": logging.INFO,
         "asyncio": logging.WARNING, "aiohttp.access": logging.WARNING,
         "sqlalchemy": logging.WARNING}  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    # Keys are the code's own names, a few hundred in all: the test runs once per name, not
    # once per log line (every delivery outcome is one).
    lowered = key.lower().replace("-", "_")
    return any(s in lowered for s in SECRET_KEYS)


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if _secret_key(key):
            event[key] = "[redacted]"
    return event


class _Level:
    """The threshold of the relay's own events: a module value, so a reload changes it for every
    logger at once (loggers are cached on first use)."""

    value = logging.INFO


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _below_level(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    if _LEVELS.get(method, logging.INFO) < _Level.value:
        raise structlog.DropEvent
    return event


class _NamedLogger(structlog.WriteLogger):
    """structlog's plain writer, with the name ``add_logger_name`` reads."""

    def __init__(self, file: Any, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedLoggerFactory:
    def __init__(self, file: Any) -> None:
        self.file = file

    def __call__(self, *args: Any) -> _NamedLogger:
        return _NamedLogger(self.file, str(args[0]) if args else "relay")


def configure(fmt: str = "", level: str = "info") -> None:
    """Our events are rendered by structlog straight to stderr (no stdlib logging in between:
    half the cost of a line, and a message makes a few); the libraries' stdlib records go
    through the same processors and renderer, so every line has one format."""
    fmt = fmt or ("console" if sys.stderr.isatty() else "json")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[_below_level, *shared, structlog.processors.format_exc_info, renderer],
        logger_factory=_NamedLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """The level of every logger (at start, and on reload); chatty libraries keep their floor."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    _Level.value = lvl
    logging.getLogger().setLevel(lvl)
    for name, floor in QUIET.items():
        logging.getLogger(name).setLevel(max(floor, lvl))

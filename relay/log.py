"""Structured logging (structlog): JSON off a terminal, console on one.

A processor masks values under secret-looking keys, so a password, API key or AUTH blob that
ends up in an event dict never reaches the log. aiosmtpd's own logger is kept at WARNING: at
INFO it logs every command line, AUTH lines included.
"""

from __future__ import annotations

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


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        lowered = key.lower().replace("-", "_")
        if any(s in lowered for s in SECRET_KEYS):
            event[key] = "[redacted]"
    return event


def configure(fmt: str = "", level: str = "info") -> None:
    fmt = fmt or ("console" if sys.stderr.isatty() else "json")
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("aiosmtpd", "mail.log", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

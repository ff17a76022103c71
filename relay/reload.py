"""SIGHUP: read the configuration again and apply what can change without a restart.

Live: the SMTP listeners' TLS certificate and key (read again from their files, so a renewed
certificate is picked up even when its path did not change) and the log level. Every other
setting needs a restart; a reload names the ones that changed and keeps running with the old
values. A configuration with problems is refused as a whole and the node keeps what it has.
Each process of the tree reloads itself (the main process tells its workers).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from relay import config
from relay import log as relay_log

log = structlog.get_logger("relay.reload")

# (section, key) of the settings a reload applies.
LIVE = {("log", "level"), ("smtp", "tls_cert"), ("smtp", "tls_key")}
# Filled in at start when not configured (a generated admin key, the embedded default's
# generated key-encryption key): left empty in the file, they have not changed.
GENERATED = {("admin", "api_key"), ("security", "key_encryption_key")}


def changed_settings(old: config.Settings, new: config.Settings) -> list[str]:
    """Dotted names of the settings whose values differ."""
    out = []
    for section in dataclasses.fields(old):
        a: Any = getattr(old, section.name)
        b: Any = getattr(new, section.name)
        if not dataclasses.is_dataclass(a):
            continue
        for fld in dataclasses.fields(a):
            before, after = getattr(a, fld.name), getattr(b, fld.name)
            if (section.name, fld.name) in GENERATED and not after:
                continue
            if before != after:
                out.append(f"{section.name}.{fld.name}")
    return out


class Reloader:
    """One per process. ``tls_hooks``: the SMTP servers' ``reload_tls`` of this process."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.tls_hooks: list[Callable[[], Awaitable[None]]] = []
        self._lock = asyncio.Lock()

    async def reload(self) -> bool:
        """True when the new configuration was applied (the parts that can change live)."""
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> bool:
        current = self.settings
        try:
            new = await asyncio.to_thread(config.load, current.source or None)
        except config.ConfigError as exc:
            log.error("reload refused: the configuration has problems", problems=exc.problems)
            return False
        changed = changed_settings(current, new)
        restart = [n for n in changed if tuple(n.split(".", 1)) not in LIVE]
        current.log.level = new.log.level
        relay_log.set_level(new.log.level)
        old_tls = (current.smtp.tls_cert, current.smtp.tls_key)
        current.smtp.tls_cert, current.smtp.tls_key = new.smtp.tls_cert, new.smtp.tls_key
        try:
            for hook in self.tls_hooks:
                await hook()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            current.smtp.tls_cert, current.smtp.tls_key = old_tls
            log.error(
                "reload: TLS certificate or key not usable; keeping the current pair",
                error=str(exc),
            )
            return False
        log.info(
            "configuration reloaded",
            log_level=new.log.level,
            tls_reloaded=bool(self.tls_hooks),
        )
        if restart:
            log.warning("changed settings take effect after a restart", settings=restart)
        return True

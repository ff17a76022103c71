"""``relay pmta-sync``: the include files PowerMTA reads, kept equal to the relay's domains.

Writes ``powermta.relay_domains_file`` and ``powermta.bounce_domains_file`` into
``powermta.include_dir`` with the content of ``sender.domains``' PowerMTA formats (one builder,
``lists.py``). A file is replaced only when its entries changed (the comment line with the
time aside), atomically: a temporary file in the same directory, fsynced, given the old file's
permissions (0644 for a new one, so PowerMTA can read it), renamed over the old one. When a
file changed, ``powermta.reload_command`` runs (without a shell); if it fails, a marker file
makes the next run try the reload again even though nothing changed any more.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mta.powermta.lists import DomainLists, domain_lists, entries, render
from relay.config import PowerMtaSettings
from relay.services import Services
from relay.store.repos import domains as repo

RELOAD_PENDING = ".relay-reload-pending"


class SyncError(Exception):
    pass


@dataclass
class SyncResult:
    changed: list[str] = field(default_factory=list)  # file names written
    reloaded: bool = False


async def current_lists(services: Services) -> DomainLists:
    async with services.db.read() as conn:
        rows = await repo.enabled(conn)
    return domain_lists(rows, services.settings)


def write_if_changed(path: Path, lines: list[str], what: str) -> bool:
    """Replace ``path`` atomically when its entries differ from ``lines``; True if written."""
    try:
        old = path.read_text(encoding="utf-8")
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        old, mode = None, 0o644
    if old is not None and entries(old) == lines:
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render(lines, what))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with_suppressed_unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return True


def with_suppressed_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    """The rename itself survives a crash only once the directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_reload(command: str, timeout: float) -> None:
    argv = shlex.split(command)  # the operator's configured command, without a shell
    try:
        done = subprocess.run(  # noqa: S603
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SyncError(f"reload command failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-500:]
        raise SyncError(f"reload command exited {done.returncode}: {tail}")


def apply(lists: DomainLists, settings: PowerMtaSettings) -> SyncResult:
    """Write what changed, reload when needed. Raises SyncError or OSError."""
    directory = Path(settings.include_dir)
    if not directory.is_dir():
        raise SyncError(f"powermta.include_dir {directory} is not a directory")
    result = SyncResult()
    for name, lines, what in (
        (settings.relay_domains_file, lists.relay, "relay domains"),
        (settings.bounce_domains_file, lists.bounce, "bounce domains"),
    ):
        if write_if_changed(directory / name, lines, what):
            result.changed.append(name)
    marker = directory / RELOAD_PENDING
    if not settings.reload_command.strip():
        return result
    if result.changed:
        marker.touch()
    if marker.exists():
        run_reload(settings.reload_command, settings.reload_timeout)
        marker.unlink()
        result.reloaded = True
    return result

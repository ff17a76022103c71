"""The data directory: private to the relay's user, and the embedded default's generated
key-encryption key.

Everything the relay writes there (SQLite database and its -wal/-shm files, the generated
certificate and key, the admin key, the key-encryption key, metrics files) is readable by its
own user only: the process runs with umask 077 (relay.cli), and at start the directory is made
0700 and files left by older versions or another umask are made 0600.

On the embedded default (no ``database.url``: SQLite in the data directory) with no
``security.key_encryption_key`` configured, one is generated into
``<data_dir>/key_encryption_key`` on first start and used to seal DKIM private keys (and the
other secrets stored sealed). It protects copies of the database file (backups, a stray
``relay.sqlite3``), not the directory as a whole: keep backups of the database apart from it.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import structlog

from relay.config import Settings

log = structlog.get_logger("relay.datadir")

KEK_FILE = "key_encryption_key"
# What the relay creates in the data directory (relative paths); SQLite's files are added
# wherever the database lives.
PRIVATE_FILES = ("admin_api_key", KEK_FILE, "tls/cert.pem", "tls/key.pem")
PRIVATE_DIRS = ("", "tls", "metrics")
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal", "-writer.lock")


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & 0o077:
        try:
            path.chmod(mode)
        except OSError as exc:
            log.warning("cannot make private", path=str(path), error=exc.strerror)
        else:
            log.info("made private", path=str(path), mode=oct(mode), was=oct(current))


def secure(settings: Settings) -> None:
    """Create the data directory (0700) and make what the relay keeps there private."""
    root = settings.data_path
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in PRIVATE_DIRS:
        _tighten(root / name, 0o700)
    for name in PRIVATE_FILES:
        _tighten(root / name, 0o600)
    database = sqlite_path(settings)
    if database is not None:
        for suffix in SQLITE_SUFFIXES:
            _tighten(Path(str(database) + suffix), 0o600)


def sqlite_path(settings: Settings) -> Path | None:
    from sqlalchemy.engine import make_url

    if not settings.database_url.startswith("sqlite"):
        return None
    database = make_url(settings.database_url).database
    return Path(database) if database else None


def use_generated_kek(settings: Settings) -> None:
    """On the embedded default (no database.url: SQLite in the data directory) without a
    configured key-encryption key: read the generated one, generating it first if there is
    none, into ``settings.security.key_encryption_key``. Elsewhere nothing changes."""
    if settings.security.key_encryption_key or settings.database.url:
        # Only the database the data directory holds gets a key from the data directory: an
        # explicit database URL may be shared by nodes with other data directories.
        return
    path = settings.data_path / KEK_FILE
    try:
        settings.security.key_encryption_key = path.read_text().strip()
        return
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = base64.b64encode(os.urandom(32)).decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of the node made it first
        settings.security.key_encryption_key = path.read_text().strip()
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    settings.security.key_encryption_key = key
    log.info("generated a key-encryption key for stored secrets", path=str(path))

"""The data directory is private, and on the embedded default DKIM private keys are sealed
with a generated key-encryption key (plaintext keys of older versions keep working and get
sealed at the next start)."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.secrets import SEALED_PREFIX
from tests.test_e2e_process import Node


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Start the relay as a careless shell would: umask 022."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return out


def _dkim_rows(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT dkim_private_key FROM gateway_domains")]


def test_data_directory_is_private_and_dkim_keys_sealed(
    tmp_path: Path, nodes: list[Node], loose_umask: None
) -> None:
    data = tmp_path / "var"
    data.mkdir(mode=0o755)  # made by hand, too open
    node = Node(tmp_path, data)
    nodes.append(node)
    node.wait_for("READY=1")
    cred = node.new_sender("owner@example.com")
    node.send(cred, "someone@example.net")  # signed with the sealed key: accepted

    modes = _modes(data)
    for name in ("relay.sqlite3", "admin_api_key", "key_encryption_key", "tls/key.pem"):
        assert name in modes, sorted(modes)
    assert any(name.endswith("-wal") for name in modes)
    for name, mode in modes.items():
        wanted = 0o700 if (data / name).is_dir() else 0o600
        assert mode == wanted, (name, oct(mode))

    db = data / "relay.sqlite3"
    (stored,) = _dkim_rows(db)
    assert stored.startswith(SEALED_PREFIX)
    code, _out, err = node.stop()
    assert code == 0, err[-2000:]
    for name in ("relay.sqlite3", "relay.sqlite3-wal"):
        if (data / name).exists():
            assert b"PRIVATE KEY" not in (data / name).read_bytes()

    # A key stored in plaintext (as before this version) keeps working, and is sealed at the
    # next start.
    from relay.secrets import SecretBox

    box = SecretBox((data / "key_encryption_key").read_text().strip())
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE gateway_domains SET dkim_private_key = ?", (box.open(stored),))
    assert _dkim_rows(db)[0].startswith("-----BEGIN PRIVATE KEY-----")
    again = Node(tmp_path, data)
    nodes.append(again)
    again.wait_for("READY=1")
    again.send(cred, "someone-else@example.net")
    (resealed,) = _dkim_rows(db)
    assert resealed.startswith(SEALED_PREFIX) and box.open(resealed) == box.open(stored)
    code, _out, err = again.stop()
    assert code == 0 and '"event": "sealed stored secrets with the key-encryption key"' in err
    with sqlite3.connect(db) as conn:
        bodies = [r[0] for r in conn.execute("SELECT body FROM messages") if r[0] is not None]
    assert len(bodies) == 2 and all(b.startswith(b"DKIM-Signature:") for b in bodies)


def test_a_configured_key_is_used_and_nothing_is_generated(
    tmp_path: Path, nodes: list[Node]
) -> None:
    import base64

    kek = base64.b64encode(os.urandom(32)).decode()
    data = tmp_path / "var"
    node = Node(tmp_path, data, RELAY_KEY_ENCRYPTION_KEY=kek)
    nodes.append(node)
    node.wait_for("READY=1")
    node.new_sender("owner@example.com")
    code, _out, err = node.stop()
    assert code == 0, err[-2000:]
    assert not (data / "key_encryption_key").exists()
    from relay.secrets import SecretBox

    (stored,) = _dkim_rows(data / "relay.sqlite3")
    assert SecretBox(kek).open(stored).startswith("-----BEGIN PRIVATE KEY-----")

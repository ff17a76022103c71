"""The systemd units are valid (systemd-analyze verify), and ordered as documented."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parent.parent / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path: Path) -> None:
    relay_bin = Path(sys.executable).parent / "relay"
    paths = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace("/opt/relay/venv/bin/relay", str(relay_bin))
        dest = tmp_path / unit.name
        dest.write_text(text)
        paths.append(str(dest))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in proc.stderr.splitlines() if "relay" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_service_is_notify_and_migrations_come_first() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNITS / "relay.service")
    assert unit["Service"]["Type"] == "notify"
    assert "relay-migrate.service" in unit["Unit"]["Requires"]
    assert "relay-migrate.service" in unit["Unit"]["After"]
    assert "serve" in unit["Service"]["ExecStart"]

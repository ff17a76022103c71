"""Configuration: TOML, environment overrides, validation (exit 2), and the example file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from relay import config

EXAMPLE = Path(__file__).parent.parent / "config" / "relay.example.toml"


def test_example_file_loads_and_documents_every_setting() -> None:
    config.load(EXAMPLE, env={})
    data = tomllib.loads(EXAMPLE.read_text())
    for section in dataclasses.fields(config.Settings):
        if section.name == "source":
            continue
        documented = data.get(section.name, {})
        for fld in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            assert fld.name in documented, f"[{section.name}] {fld.name} missing from the example"


def test_environment_overrides_and_aliases(tmp_path: Path) -> None:
    s = config.load(
        None,
        env={
            "RELAY_SMTP_LISTEN": "127.0.0.1:1, [::1]:2",
            "RELAY_SMTP_MAX_RECIPIENTS": "7",
            "RELAY_DELIVERY_ENABLED": "false",
            "RELAY_DATA_DIR": str(tmp_path),
        },
    )
    assert s.smtp.listen == ["127.0.0.1:1", "[::1]:2"]
    assert s.smtp.max_recipients == 7 and s.delivery.enabled is False
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'relay.sqlite3'}"


def test_every_problem_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\nmax_recipients = "many"\nlisten = ["nohost"]\n[nosuch]\nx = 1\n')
    with pytest.raises(config.ConfigError) as err:
        config.load(bad, env={"RELAY_DATABASE_URL": "mysql://x"})
    text = str(err.value)
    for needle in ("max_recipients", "missing port", "unknown section", "database.url"):
        assert needle in text


def test_check_config_exits_2_with_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp]\nmax_auth_failures = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "max_auth_failures" in proc.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "-c", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr

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
        if section.name not in config._SECTIONS:
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
        config.load(
            bad,
            env={"RELAY_DATABASE_URL": "mysql://x", "RELAY_POWERMTA_ACCOUNTING_CONNECTIONS": "0"},
        )
    text = str(err.value)
    for needle in (
        "max_recipients",
        "missing port",
        "unknown section",
        "database.url",
        "powermta.accounting_connections: 1 to 16",
    ):
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


def _relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full,
    )


def test_version() -> None:
    import importlib.metadata

    proc = _relay("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"relay {importlib.metadata.version('relay')}"


def test_numbers_are_never_truncated_and_wrong_types_read_plainly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[smtp]\nmax_message_size = 1.5\nmax_recipients = "lots"\ncommand_timeout = "soon"\n'
        'listen = ["127.0.0.1:smtp"]\n[delivery]\nretry_base = nan\n'
    )
    with pytest.raises(config.ConfigError) as err:
        config.load(bad, env={"RELAY_SMTP_MAX_AUTH_FAILURES": "2.5"})
    problems = err.value.problems
    assert f"{bad} [smtp] max_message_size: expected a whole number (got 1.5)" in problems
    assert f"{bad} [smtp] max_recipients: expected a whole number (got 'lots')" in problems
    assert f"{bad} [smtp] command_timeout: expected a number (got 'soon')" in problems
    assert f"{bad} [delivery] retry_base: expected a finite number (got nan)" in problems
    assert (
        "RELAY_SMTP_MAX_AUTH_FAILURES [smtp] max_auth_failures: expected a whole number (got '2.5')"
        in problems
    )
    assert "smtp.listen: port is not a number in '127.0.0.1:smtp'" in problems
    # No Python wording leaks into what an operator reads.
    assert not any("invalid literal" in p or "could not convert" in p for p in problems)
    # A whole number written as a float is still that number.
    good = tmp_path / "good.toml"
    good.write_text("[smtp]\nmax_recipients = 7.0\n")
    assert config.load(good, env={"RELAY_DATA_DIR": str(tmp_path)}).smtp.max_recipients == 7


def test_check_config_finds_a_port_in_use_and_unreachable_storage(tmp_path: Path) -> None:
    import socket

    from tests.conftest import free_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        dead = free_port()  # nothing listens there
        env = {
            "RELAY_DATA_DIR": str(tmp_path / "var"),
            "RELAY_SMTP_LISTEN": f"127.0.0.1:{port}",
            "RELAY_SMTPS_LISTEN": f"127.0.0.1:{free_port()}",
            "RELAY_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
            "RELAY_DATABASE_URL": f"postgresql+asyncpg://relay@127.0.0.1:{dead}/relay",
            "RELAY_REDIS_URL": f"redis://:hunter2@127.0.0.1:{dead}/0",
        }
        proc = _relay("check-config", env=env)
        offline = _relay("check-config", "--no-network", env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert f"  smtp.listen: 127.0.0.1:{port} is already in use" in lines
    assert (
        f"  database postgresql+asyncpg://relay@127.0.0.1:{dead}/relay: connection refused" in lines
    )
    assert f"  Redis redis://:***@127.0.0.1:{dead}/0: connection refused" in lines
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr
    assert offline.returncode == 0 and "not checked" in offline.stdout


@pytest.mark.postgres
async def test_check_config_names_a_missing_database(pg_url: str, tmp_path: Path) -> None:
    missing = pg_url.rsplit("/", 1)[0] + "/relay_no_such_db"
    env = {"RELAY_DATA_DIR": str(tmp_path), "RELAY_DATABASE_URL": missing}
    proc = _relay("check-config", "--no-network", env=env)
    assert proc.returncode == 0
    from relay.diagnose import check_database

    assert await check_database(pg_url) is None
    problem = await check_database(missing)
    assert problem == f'database {missing}: database "relay_no_such_db" does not exist'


@pytest.mark.postgres
def test_serve_names_what_failed_in_one_line(pg_url: str, tmp_path: Path) -> None:
    from tests.conftest import free_port

    base = {
        "RELAY_DATA_DIR": str(tmp_path),
        "RELAY_SMTP_LISTEN": f"127.0.0.1:{free_port()}",
        "RELAY_SMTPS_LISTEN": f"127.0.0.1:{free_port()}",
        "RELAY_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "RELAY_ADMIN_API_KEY": "adm_x",
        "RELAY_LOG_FORMAT": "json",
    }
    missing = pg_url.rsplit("/", 1)[0] + "/relay_no_such_db"
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/relay"
    for url, why in (
        (missing, 'database "relay_no_such_db" does not exist'),
        (dead, "connection refused"),
    ):
        proc = _relay("serve", env={**base, "RELAY_DATABASE_URL": url})
        assert proc.returncode == 1
        assert f"cannot start: database {url}: {why}" in proc.stderr.splitlines()
        assert "Traceback" not in proc.stderr


def test_a_misspelled_environment_variable_is_named(tmp_path: Path) -> None:
    env = {"RELAY_DATA_DIR": str(tmp_path), "RELAY_SMTP_LISTNE": "127.0.0.1:2525"}
    loaded = config.load(env=env)
    assert loaded.unknown_env == [
        "environment variable RELAY_SMTP_LISTNE is not a setting (did you mean RELAY_SMTP_LISTEN?)"
    ]
    # Settings and the test suite's own variables are not reported.
    ok = {"RELAY_DATA_DIR": str(tmp_path), "RELAY_SMTP_MAX_RECIPIENTS": "5", "RELAY_TEST_X": "1"}
    assert config.load(env=ok).unknown_env == []
    proc = _relay("check-config", "--no-network", env=env)
    assert proc.returncode == 2
    assert "  environment variable RELAY_SMTP_LISTNE is not a setting" in proc.stderr

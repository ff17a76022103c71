"""relay pmta-sync: PowerMTA's include files, written atomically with sender.domains' content,
and PowerMTA reloaded only when one of them changed; the systemd timer that runs it."""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mta.powermta.lists import entries
from mta.powermta.sync import RELOAD_PENDING, SyncError, apply, current_lists
from relay.services import Services
from tests.conftest import Api
from tests.test_api_relay_domains import make_domains

UNITS = Path(__file__).parent.parent / "systemd"


def _reloads(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


async def _api_text(api: Api, fmt: str, admin: str) -> str:
    status, body = await api.request(
        "POST",
        "/api/v1/sender.domains",
        json={"DomainsResponseFormat": fmt},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert status == 200, body
    return str(body)


async def test_files_match_sender_domains_and_reload_only_on_change(
    api: Api, services: Services, tmp_path: Path
) -> None:
    admin = services.settings.admin.api_key
    user_key = await make_domains(api, admin, ["example.com", "custom.example.org"], ["p.example"])
    include = tmp_path / "pmta"
    include.mkdir()
    reload_log = tmp_path / "reloads"
    settings = dataclasses.replace(
        services.settings.powermta,
        include_dir=str(include),
        reload_command=f"sh -c 'echo reloaded >> {reload_log}'",
    )
    relay_file = include / settings.relay_domains_file
    bounce_file = include / settings.bounce_domains_file

    result = await asyncio.to_thread(apply, await current_lists(services), settings)
    assert result.changed == [relay_file.name, bounce_file.name] and result.reloaded
    assert _reloads(reload_log) == 1
    # The same entries as the API's PowerMTA formats; readable by PowerMTA's user.
    for path, fmt in (
        (relay_file, "powermta-relay-domains"),
        (bounce_file, "powermta-bounce-domains"),
    ):
        assert entries(path.read_text()) == entries(await _api_text(api, fmt, admin))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert entries(relay_file.read_text()) == [
        "relay-domain bounce.custom.example.org",
        "relay-domain custom.example.org",
        "relay-domain example.com",
        "relay-domain mail.example.com",
    ]
    assert entries(bounce_file.read_text()) == [
        "domain bounce.custom.example.org",
        "domain mail.example.com",
    ]
    assert sorted(os.listdir(include)) == sorted([relay_file.name, bounce_file.name])

    # Nothing changed: files untouched, no reload.
    before = relay_file.stat().st_mtime_ns, relay_file.stat().st_ino
    result = await asyncio.to_thread(apply, await current_lists(services), settings)
    assert (result.changed, result.reloaded) == ([], False)
    assert (relay_file.stat().st_mtime_ns, relay_file.stat().st_ino) == before
    assert _reloads(reload_log) == 1

    # A new Enabled domain: both files change (a new inode each: renamed into place), the
    # operator's permissions are kept, one reload.
    os.chmod(relay_file, 0o640)
    added = await api.call("emailgateway.adddomain", APIKey=user_key, DomainName="new.example")
    await api.call(
        "emailgateway.setdomainstatus",
        AdminAPIKey=admin,
        DomainID=added["NewSenderDomainID"],
        Status="Enabled",
    )
    result = await asyncio.to_thread(apply, await current_lists(services), settings)
    assert result.changed == [relay_file.name, bounce_file.name] and result.reloaded
    assert relay_file.stat().st_ino != before[1]
    assert stat.S_IMODE(relay_file.stat().st_mode) == 0o640
    assert "relay-domain new.example" in entries(relay_file.read_text())
    assert _reloads(reload_log) == 2


async def test_a_failed_reload_is_retried_by_the_next_run(
    api: Api, services: Services, tmp_path: Path
) -> None:
    await make_domains(api, services.settings.admin.api_key, ["example.com"], [])
    include = tmp_path / "pmta"
    include.mkdir()
    failing = dataclasses.replace(
        services.settings.powermta,
        include_dir=str(include),
        reload_command="sh -c 'echo cannot reach pmta >&2; exit 3'",
    )
    with pytest.raises(SyncError, match="exited 3: cannot reach pmta"):
        await asyncio.to_thread(apply, await current_lists(services), failing)
    assert (include / RELOAD_PENDING).exists()
    reload_log = tmp_path / "reloads"
    working = dataclasses.replace(failing, reload_command=f"sh -c 'echo r >> {reload_log}'")
    result = await asyncio.to_thread(apply, await current_lists(services), working)
    assert (result.changed, result.reloaded) == ([], True)
    assert _reloads(reload_log) == 1 and not (include / RELOAD_PENDING).exists()
    # No reload command: files only.
    quiet = dataclasses.replace(working, reload_command="")
    assert (await asyncio.to_thread(apply, await current_lists(services), quiet)).reloaded is False
    missing = dataclasses.replace(working, include_dir=str(tmp_path / "absent"))
    with pytest.raises(SyncError, match="not a directory"):
        await asyncio.to_thread(apply, await current_lists(services), missing)


async def test_the_command(api: Api, services: Services, tmp_path: Path) -> None:
    await make_domains(api, services.settings.admin.api_key, ["example.com"], [])
    include = tmp_path / "pmta"
    include.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATABASE_URL=services.settings.database_url,
        RELAY_DATA_DIR=str(tmp_path / "var"),
        RELAY_POWERMTA_INCLUDE_DIR=str(include),
        RELAY_POWERMTA_RELOAD_COMMAND="true",
    )
    relay = str(Path(sys.executable).parent / "relay")
    first = await asyncio.to_thread(
        subprocess.run, [relay, "pmta-sync"], env=env, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    assert f"wrote {include}/relay-domains.conf" in first.stdout
    assert "ran 'true'" in first.stdout
    again = await asyncio.to_thread(
        subprocess.run, [relay, "pmta-sync"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (again.returncode, again.stdout) == (0, "")
    env["RELAY_POWERMTA_INCLUDE_DIR"] = str(tmp_path / "absent")
    failed = await asyncio.to_thread(
        subprocess.run, [relay, "pmta-sync"], env=env, capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 1 and "not a directory" in failed.stderr


def test_timer_runs_the_service_every_minute() -> None:
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.read(UNITS / "relay-pmta-sync.timer")
    assert timer["Timer"]["OnCalendar"] == "minutely"
    assert timer["Timer"]["Unit"] == "relay-pmta-sync.service"
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read(UNITS / "relay-pmta-sync.service")
    assert service["Service"]["Type"] == "oneshot"
    assert "relay pmta-sync" in service["Service"]["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_timer_and_service_verify(tmp_path: Path) -> None:
    relay_bin = Path(sys.executable).parent / "relay"
    paths = []
    for name in ("relay-pmta-sync.service", "relay-pmta-sync.timer"):
        text = (UNITS / name).read_text().replace("/opt/relay/venv/bin/relay", str(relay_bin))
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in proc.stderr.splitlines() if "relay-pmta" in line]
    assert proc.returncode == 0 and not problems, proc.stderr

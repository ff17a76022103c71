"""The shipped systemd units, read the way systemd reads them, for tests that run the relay
under a unit's own environment and system call filter (no running systemd needed)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.tools import need

ROOT = Path(__file__).parent.parent
UNITS = ROOT / "systemd"
SYSTEM_PYTHON = "/usr/bin/python3"
STATE_DIR = "/var/lib/relay"  # the units' data directory, replaced by a test directory


def need_sandbox_tools() -> None:
    need("systemd-analyze", shutil.which("systemd-analyze") is not None, "apt-get install systemd")
    probe = (
        subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True, timeout=30)
        if os.path.exists(SYSTEM_PYTHON)
        else None
    )
    need(
        "python3-seccomp",
        probe is not None and probe.returncode == 0,
        "apt-get install python3-seccomp",
    )


def service_entries(unit: str) -> list[tuple[str, str]]:
    """(key, value) of the [Service] section in file order; repeated keys kept (configparser
    would keep only the last SystemCallFilter=)."""
    out: list[tuple[str, str]] = []
    section = ""
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


@functools.cache
def syscall_group(name: str) -> frozenset[str]:
    """A @group's system calls, nested groups expanded (systemd-analyze syscall-filter)."""
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    calls: set[str] = set()
    for line in text.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= syscall_group(item) if item.startswith("@") else {item}
    return frozenset(calls)


def _names(value: str) -> set[str]:
    calls: set[str] = set()
    for item in value.split():
        item = item.split(":", 1)[0]  # name:errno
        calls |= syscall_group(item) if item.startswith("@") else {item}
    return calls


def allowed_syscalls(unit: str) -> set[str]:
    """The allow list SystemCallFilter= lines produce (systemd.exec(5)): the first line sets
    the mode (an allow list, with @default added); later lines add ("name") or remove
    ("~name") calls."""
    allowed: set[str] | None = None
    for key, value in service_entries(unit):
        if key != "SystemCallFilter":
            continue
        invert = value.startswith("~")
        calls = _names(value.lstrip("~"))
        if allowed is None:
            assert not invert, "tests expect an allow-list filter (first line without ~)"
            allowed = set(syscall_group("@default"))
        if invert:
            allowed -= calls
        else:
            allowed |= calls
    assert allowed, f"{unit} has no SystemCallFilter="
    return allowed


def unit_environment(unit: str, state_dir: Path) -> tuple[dict[str, str], Path]:
    """The unit's Environment= variables and working directory, its state directory moved to
    ``state_dir``. Without WorkingDirectory= systemd starts services in /."""
    env: dict[str, str] = {}
    cwd = Path("/")
    for key, value in service_entries(unit):
        value = value.replace(STATE_DIR, str(state_dir))
        if key == "Environment":
            name, _, val = value.partition("=")
            env[name] = val
        elif key == "WorkingDirectory":
            cwd = Path(value.lstrip("-"))
    return env, cwd


def importable_path() -> str:
    """PYTHONPATH giving /usr/bin/python3 this checkout and its virtualenv's packages (same
    Python minor version, so the same compiled extensions)."""
    site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    return os.pathsep.join([str(ROOT), site])


def sandboxed(unit: str, tmp: Path, command: list[str], user: str = "nobody") -> list[str]:
    """``command`` wrapped to run under ``unit``'s system call filter as ``user``."""
    allow = tmp / f"{unit}.syscalls.json"
    allow.write_text(json.dumps(sorted(allowed_syscalls(unit))))
    allow.chmod(0o644)
    return [
        SYSTEM_PYTHON,
        str(ROOT / "tests" / "seccomp_exec.py"),
        str(allow),
        user,
        "--",
        *command,
    ]

"""Helper processes of the benchmark, and the guarantee that none outlives it.

Every child starts in its own session, so a Ctrl-C in the terminal reaches only the benchmark,
which then stops them in order (load, targets, sink). If that orderly stop is itself cut short,
an atexit hook kills whatever is still registered.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = (
    Path(__file__).resolve().parent.parent
)  # the checkout: `-m bench.x` / `-m relay` resolve here

# The longest line a helper may answer: bench/faults.py reads every message id in one line.
PIPE_LIMIT = 64 * 1024 * 1024

_live: dict[int, asyncio.subprocess.Process] = {}
_cleanups: list[Callable[[], None]] = []


class ChildError(Exception):
    pass


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # The checkout's own code, not whatever copy is installed in the venv.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


async def spawn(
    args: list[str], *, log_path: Path, env: dict[str, str] | None = None, pipes: bool = True
) -> asyncio.subprocess.Process:
    """Start ``args`` in a new session, stderr (and stdout unless piped) into log_path."""
    log = log_path.open("ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipes else log,
            stderr=log,
            env=child_env(env),
            cwd=ROOT,
            start_new_session=True,
            limit=PIPE_LIMIT,
        )
    finally:
        log.close()
    _live[proc.pid] = proc
    return proc


async def terminate(proc: asyncio.subprocess.Process, timeout: float) -> int:
    """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    _live.pop(proc.pid, None)
    assert proc.returncode is not None
    return proc.returncode


def forget_child(proc: asyncio.subprocess.Process) -> None:
    """A child that exited on its own (or was killed on purpose) needs no cleanup."""
    _live.pop(proc.pid, None)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Child:
    """A ``python -m bench.<module>`` helper that answers one JSON object per stdout line."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def start(cls, name: str, module: str, *args: str, log_dir: Path) -> Child:
        log_path = log_dir / f"{name}.log"
        proc = await spawn([sys.executable, "-m", module, *args], log_path=log_path)
        return cls(name, proc, log_path)

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise ChildError(f"{self.name}: no answer within {timeout:.0f} s") from None
        if not line:
            await self.proc.wait()
            raise ChildError(f"{self.name} exited ({self.proc.returncode}):\n{tail(self.log_path)}")
        data: dict[str, Any] = json.loads(line)
        return data

    async def ask(self, line: str, timeout: float = 10.0) -> dict[str, Any]:
        await self.send(line)
        return await self.read(timeout)

    async def stop(self, timeout: float = 5.0) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()  # EOF: the helpers end their loops on it
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            pass
        await terminate(self.proc, timeout)


def on_exit(func: Callable[[], None]) -> Callable[[], None]:
    """Run func at interpreter exit unless forget() was called first (idempotent cleanups)."""
    _cleanups.append(func)
    return func


def forget(func: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        _cleanups.remove(func)


@atexit.register
def _last_resort() -> None:
    for func in reversed(_cleanups):
        with contextlib.suppress(Exception):
            func()
    for pid, proc in list(_live.items()):
        if proc.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

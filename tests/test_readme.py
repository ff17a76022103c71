"""The README's five-minute walk-through, run literally: the block is extracted from README.md
and run with bash against a relay on free ports (the block's API, SMTP and SINK variables)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port
from tests.test_e2e_process import Node
from tests.tools import need

ROOT = Path(__file__).parent.parent


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Five minutes with it", 1)[1]
    match = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert match, "no sh block in the README's walk-through"
    return match.group(1)


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    for tool in ("curl", "jq", "swaks"):
        need(tool, shutil.which(tool) is not None, f"apt-get install {tool}")
    # The walk-through runs in a checkout after `make run`: .venv/bin/python and var/.
    work = tmp_path / "checkout"
    work.mkdir()
    if sys.prefix != sys.base_prefix:
        (work / ".venv").symlink_to(sys.prefix)
    else:  # not in a virtualenv: this interpreter has the packages
        (work / ".venv" / "bin").mkdir(parents=True)
        wrapper = work / ".venv" / "bin" / "python"
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
        wrapper.chmod(0o755)
    node = Node(tmp_path, work / "var")
    try:
        node.wait_for("READY=1")
        script = tmp_path / "walkthrough.sh"
        script.write_text(walkthrough())
        out_path = tmp_path / "walkthrough.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            API=f"http://127.0.0.1:{node.admin}/api.php",
            SMTP=f"127.0.0.1:{node.smtp}",
            SINK=f"127.0.0.1:{free_port()}",
        )
        with out_path.open("w") as out:
            proc = subprocess.Popen(
                ["bash", "-eo", "pipefail", str(script)],
                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                code = proc.wait(timeout=150)
            finally:
                # The sink it started in the background, whatever happened.
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        output = out_path.read_text()
        assert code == 0, output[-4000:]
        # The sink printed the message as it arrived, signed for the sender domain.
        message = output.split("---------- MESSAGE FOLLOWS ----------", 1)[1]
        message = message.split("------------ END MESSAGE ------------", 1)[0]
        assert message.lstrip().startswith("DKIM-Signature: v=1; a=rsa-sha256")
        assert "d=example.com" in message and "From: app@example.com" in message
        # The events read back: accepted, then delivered with the sink's reply.
        events = [line.split("\t") for line in output.splitlines() if line.count("\t") == 3]
        assert [e[0] for e in events] == ["delivery", "accepted"], output[-3000:]
        assert {e[1] for e in events} == {"someone@example.net"}
        assert events[0][2] == events[1][2] and events[0][3].startswith("250")
    finally:
        code, _out, err = node.stop()
    assert code == 0, err[-2000:]

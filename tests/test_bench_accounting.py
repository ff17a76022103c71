"""bench/pmta_accounting.py runs end to end on a small file: every record recorded in process,
none on replay, all of them through a real ``relay pmta-accounting`` pipe, and a verdict per
database against the 20,000 records/s target."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_accounting_benchmark_runs_and_judges(
    database: str, request: pytest.FixtureRequest
) -> None:
    if database == "postgres":
        request.getfixturevalue("pg_url")  # skipped (or failed in CI) without PostgreSQL
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_TEST_PG_URL"] = PG_ADMIN_URL
    done = subprocess.run(
        [sys.executable, "-m", "bench.pmta_accounting", "--records", "2000", "--database", database],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert f"[{database}] in-process 2000 records" in out
    assert "(recorded 2000, not recorded 0)" in out
    assert "(recorded 0, not recorded 2000)" in out  # the replay
    assert re.search(rf"\[{database}\] pipe +2000 records in .* from its first read", out), out
    verdicts = out.split("target 20,000 records/s:\n", 1)[1].splitlines()
    assert [v.split(":")[0].strip() for v in verdicts] == [
        f"[{database}] in process",
        f"[{database}] a pipe, from its first read",
    ]
    assert all(re.search(r"\((meets|below) the target\)$", v) for v in verdicts), verdicts

"""The documentation describes what the code does (the parts a test can check)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from relay import metrics

ROOT = Path(__file__).parent.parent


def test_every_metric_is_documented() -> None:
    ops = (ROOT / "docs" / "operations.md").read_text()
    names = [m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert names
    for name in names:
        # prometheus_client keeps a counter's name without its _total suffix.
        assert f"`{name}`" in ops or f"`{name}_total`" in ops, name


def test_readme_opens_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in lines[:8] if re.match(r"^make (run|test)\b", line)]
    assert [c.split()[1] for c in commands] == ["run", "test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci

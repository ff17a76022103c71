"""The Prometheus alert rules and the Grafana dashboard name only metrics the relay exports,
and the rules pass promtool's checks and their own unit tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from relay import metrics
from tests.tools import need

ROOT = Path(__file__).parent.parent
PROMETHEUS = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "relay-dashboard.json"

# Metrics the rules and the dashboard use that another part of the relay is adding and
# relay/metrics.py does not define yet. Each entry says who exports it; once it is in
# relay/metrics.py the entry is not needed.
ADDED_ELSEWHERE: set[str] = set()

_NAME = re.compile(r"\brelay_[a-z0-9_]+\b")


def exported() -> set[str]:
    """Every series name relay/metrics.py produces."""
    names: set[str] = set()
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, kind = metric._name, metric._type
        if kind == "counter":
            names |= {f"{name}_total", f"{name}_created"}
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        else:
            names.add(name)
    return names


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in data["templating"]["list"] if "definition" in v]
    return exprs


def test_every_metric_named_is_exported() -> None:
    known = exported() | ADDED_ELSEWHERE
    sources = {
        "alerts.yml": (PROMETHEUS / "alerts.yml").read_text(),
        "alerts_test.yml": (PROMETHEUS / "alerts_test.yml").read_text(),
        "relay-dashboard.json": "\n".join(dashboard_exprs()),
    }
    for source, text in sources.items():
        names = set(_NAME.findall(text))
        assert names, source
        assert not names - known, f"{source} names metrics nobody exports: {names - known}"


def test_dashboard_covers_the_operators_questions() -> None:
    text = "\n".join(dashboard_exprs())
    for metric in (
        "relay_messages_accepted_total",  # acceptance rate
        "relay_delivery_results_total",  # delivery rate
        "relay_smtp_rejections_total",  # refusals by reason
        "relay_queue_pending_recipients",  # queue depth
        "relay_queue_oldest_age_seconds",  # oldest age
        "relay_delivery_seconds_bucket",  # delivery latency
        "relay_webhook_backlog",  # webhook backlog
        "relay_storage_up",  # storage errors
    ):
        assert metric in text, metric


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    need("promtool", shutil.which("promtool") is not None, "apt-get install prometheus")
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def test_rules_pass_promtool_check() -> None:
    proc = _promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = re.findall(r"^\s+- alert: (\w+)", (PROMETHEUS / "alerts.yml").read_text(), re.M)
    assert len(alerts) >= 5


def test_rules_pass_their_unit_tests() -> None:
    proc = _promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    # Every alert has a unit test.
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts_test.yml").read_text()))
    alerts = set(re.findall(r"- alert: (\w+)", (PROMETHEUS / "alerts.yml").read_text()))
    assert alerts <= tested, alerts - tested

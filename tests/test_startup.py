"""Starting without Redis: the relay runs, says so, says why, and retries with a back-off."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import free_port
from tests.test_e2e_process import Node


def test_redis_down_is_reported_with_reason_and_backoff(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    node = Node(
        tmp_path,
        tmp_path / "var",
        RELAY_REDIS_URL=f"redis://:s3cret-pw@127.0.0.1:{dead}/0",
        RELAY_DELIVERY_PROCESSES="0",
        RELAY_SMTP_PROCESSES="1",
    )
    try:
        node.wait_for("READY=1")
        address = f"redis://127.0.0.1:{dead}/0"

        def warnings() -> list[dict[str, object]]:
            out = []
            for line in node.err_path.read_text().splitlines():
                if line.startswith("{"):
                    event = json.loads(line)
                    if event.get("redis") == address and event["level"] == "warning":
                        out.append(event)
            return out

        deadline = time.monotonic() + 60
        while len(warnings()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        seen = warnings()
        assert [w["retry_in"] for w in seen[:3]] == [1.0, 2.0, 4.0]
        assert {w["error"] for w in seen} == {"connection refused"}
    finally:
        code, _out, err = node.stop()
    assert code == 0
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    started = next(e for e in events if e["event"] == "relay started")
    assert started["redis"] == "down"
    at_start = next(e for e in events if str(e["event"]).startswith("Redis unavailable at start"))
    assert at_start["error"] == f"Redis redis://:***@127.0.0.1:{dead}/0: connection refused"
    assert "s3cret-pw" not in err

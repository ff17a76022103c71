"""SIGHUP: the TLS certificate and key and the log level change live, in every process of
`relay serve`; a broken configuration is refused; nothing stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

from relay.tls import ensure_self_signed
from tests.conftest import free_port

ROOT = Path(__file__).parent.parent


def _peer_cert(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=ctx)
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        cert = sock.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def _wait(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_sighup_reloads_certificate_and_log_level_everywhere(tmp_path: Path) -> None:
    old_cert, old_key = ensure_self_signed(tmp_path / "old", "old.test")
    new_cert, new_key = ensure_self_signed(tmp_path / "new", "new.test")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(old_cert, live / "cert.pem")
    shutil.copy(old_key, live / "key.pem")
    smtp_port, admin_port, tracking_port = free_port(), free_port(), free_port()
    conf = tmp_path / "relay.toml"

    def write_conf(level: str, extra: str = "") -> None:
        conf.write_text(
            f'[server]\ndata_dir = "{tmp_path / "var"}"\n'
            f'[smtp]\nlisten = ["127.0.0.1:{smtp_port}"]\nsmtps_listen = []\nprocesses = 3\n'
            f'tls_cert = "{live / "cert.pem"}"\ntls_key = "{live / "key.pem"}"\n{extra}'
            f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
            f'[tracking]\nlisten = "127.0.0.1:{tracking_port}"\n'
            f'[log]\nformat = "json"\nlevel = "{level}"\n'
        )

    write_conf("info")
    log = tmp_path / "relay.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "CI"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "-c", str(conf)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait(lambda: "relay started" in log.read_text(), "relay started")
        old_der = _peer_cert(smtp_port)
        # Three SMTP processes (this one and two children) accept on the same socket;
        # several connections reach them all.
        assert all(_peer_cert(smtp_port) == old_der for _ in range(6))

        # A renewed certificate at the same path, and a new log level.
        shutil.copy(new_cert, live / "cert.pem")
        shutil.copy(new_key, live / "key.pem")
        write_conf("debug")
        proc.send_signal(signal.SIGHUP)
        # Main, two SMTP children, one delivery child.
        _wait(lambda: log.read_text().count("configuration reloaded") >= 4, "4 reloads")
        reloads = [e for e in _events(log) if e["event"] == "configuration reloaded"]
        assert {e["log_level"] for e in reloads} == {"debug"}
        seen = {_peer_cert(smtp_port) for _ in range(12)}
        assert old_der not in seen and len(seen) == 1

        # A setting that needs a restart is named, and left as it was.
        write_conf("debug", extra="max_recipients = 5\n")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: "take effect after a restart" in log.read_text(), "restart warning")
        warning = next(e for e in _events(log) if "after a restart" in str(e["event"]))
        assert warning["settings"] == ["smtp.max_recipients"]

        # A broken configuration or certificate is refused; the node keeps what it has.
        conf.write_text(conf.read_text().replace('level = "debug"', 'level = "loud"'))
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: "reload refused" in log.read_text(), "reload refused")
        write_conf("debug")
        (live / "key.pem").write_bytes(old_key.read_bytes())  # does not match the cert
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: "keeping the current pair" in log.read_text(), "bad pair refused")
        assert {_peer_cert(smtp_port) for _ in range(6)} == seen

        assert proc.poll() is None
        assert "worker process died" not in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]

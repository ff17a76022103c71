"""A private Postfix MX for tests: its own configuration, queue and data directories under the
test's temporary directory (``postfix -c DIR start``), smtpd on free 127.0.0.1 ports, every
accepted message discarded. Its ``mynetworks`` does not include 127.0.0.1, so a client on
loopback is an Internet client of an MX: relaying is decided by ``relay_domains`` and the
restrictions, as on a real MX.

Postfix must be installed (Debian package ``postfix``; ``.ci/run`` installs it) and we must be
root: ``postfix start`` runs its daemons as the ``postfix`` user.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.postfix import MASTER_CF, PostfixInstance, compatibility_level, find_postfix, version
from tests.conftest import IN_CI, free_port

# Postfix's own services from the benchmark's master.cf (its first line is the smtpd listener).
SERVICES = "\n".join(MASTER_CF.splitlines()[2:]) + "\n"


def require_postfix() -> str:
    postfix = find_postfix()
    if postfix is None:
        message = "Postfix is not installed (Debian package postfix; .ci/run installs it)"
        if IN_CI:
            pytest.fail(message + " (required in CI)")
        pytest.skip(message)
    if os.geteuid() != 0:
        pytest.skip("starting Postfix (postfix -c DIR start) needs root")
    return postfix


@dataclass
class Smtpd:
    """One smtpd listener of the instance, with master.cf ``-o`` overrides."""

    overrides: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)


class PostfixMx(PostfixInstance):
    """Lives in its own directory under the system's temporary directory (pytest's are not
    traversable by the postfix user), removed by ``stop``."""

    def __init__(self, main: dict[str, str], listeners: list[Smtpd]) -> None:
        postfix = require_postfix()
        root = Path(tempfile.mkdtemp(prefix="relay-test-postfix-"))
        super().__init__(postfix, root, listeners[0].port, sink_port=0)
        self.main = main
        self.listeners = listeners

    def start(self) -> None:
        for sub in ("etc", "queue", "data"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the postfix user must reach its queue and data directories
        settings = {
            "compatibility_level": compatibility_level(version(self.postfix)),
            "queue_directory": f"{self.root}/queue",
            "data_directory": f"{self.root}/data",
            "maillog_file": f"{self.root}/maillog",
            "maillog_file_prefixes": str(self.root),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.postfix.test",
            "mydomain": "postfix.test",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": "192.0.2.1/32",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "relay_transport": "discard:accepted by the test MX",
            "default_transport": "discard:accepted by the test MX",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "smtpd_peername_lookup": "no",
            "smtputf8_enable": "no",
            "smtpd_tls_security_level": "none",
            "biff": "no",
            **self.main,
        }
        (self.config_dir / "main.cf").write_text(
            "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        smtpds = "".join(
            f"127.0.0.1:{s.port} inet n - n - - smtpd\n"
            + "".join(f"  -o {o}\n" for o in s.overrides)
            for s in self.listeners
        )
        (self.config_dir / "master.cf").write_text(smtpds + SERVICES)
        shutil.chown(self.root / "data", user="postfix")
        for args in (("check",), ("start",)):
            out = self._run(*args)
            if out.returncode != 0:
                raise RuntimeError(
                    f"postfix {args[0]} failed: {(out.stdout + out.stderr).strip()}\n"
                    f"{self.log_tail()}"
                )
            self.started = args[0] == "start"
        for listener in self.listeners:
            self.port = listener.port
            self._wait_listening(30)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def send(self, port: int, rcpt: str, sender: str = "someone@sender.test") -> tuple[int, str]:
        """One message through smtplib: (250, "") when accepted, else the refusal."""
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.sendmail(
                    sender, [rcpt], f"From: {sender}\r\nTo: {rcpt}\r\nSubject: mx\r\n\r\nhi\r\n"
                )
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[rcpt]
            return code, text.decode()
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        return 250, ""

    def postmap(self, key: str, table: str) -> tuple[str, str]:
        """("found", value) | ("notfound", "") | ("temp", warning) through ``postmap -q``,
        which exits 1 both for not found and for a failed lookup: stderr tells them apart."""
        postmap = str(Path(self.postfix).with_name("postmap"))
        out = subprocess.run(
            [postmap, "-c", str(self.config_dir), "-q", key, table],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode == 0:
            return "found", out.stdout.strip()
        if out.stderr.strip():
            return "temp", out.stderr.strip()
        return "notfound", ""

"""A private Postfix instance: the baseline the relay is compared with.

Its own configuration, queue and data directories under the benchmark's temporary directory
(``postfix -c DIR start``), smtpd on one free 127.0.0.1 port, every message relayed to the
benchmark's sink (``relayhost = [127.0.0.1]:PORT``). No local delivery, no DNS (client names
are not looked up, the relay host is an address literal), no content filters or milters, no
TLS: Postfix's defaults otherwise, including its flow control (in_flow_delay). It logs to a file
like a production Postfix logs every message (through postlogd).

The package must be installed (docs/benchmarks.md) and we must be root: ``postfix start`` runs
its daemons as the ``postfix`` user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.children import tail

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def find_postfix() -> str | None:
    """The postfix command, or None when the package is not installed."""
    found = shutil.which("postfix") or shutil.which("postfix", path="/usr/sbin:/sbin")
    return found


def version(postfix: str) -> str:
    postconf = str(Path(postfix).with_name("postconf"))
    try:
        out = subprocess.run(
            [postconf, "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return ""
    return out.stdout.strip()


def compatibility_level(mail_version: str) -> str:
    """3.6 where it exists (its safer defaults), else 2; our settings are explicit anyway."""
    try:
        major, minor = (int(x) for x in mail_version.split(".")[:2])
    except ValueError:
        return "2"
    return "3.6" if (major, minor) >= (3, 6) else "2"


def main_cf(root: Path, sink_port: int, mail_version: str = "") -> str:
    return f"""\
compatibility_level = {compatibility_level(mail_version)}
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
# No local delivery: nothing is local, everything goes to the relay host.
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relay_domains =
relayhost = [127.0.0.1]:{sink_port}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# No DNS: no MX lookups (relayhost is a literal), no client name lookups.
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
# No filters of any kind.
content_filter =
smtpd_milters =
non_smtpd_milters =
header_checks =
body_checks =
smtpd_tls_security_level = none
smtp_tls_security_level = none
biff = no
"""


def master_cf(port: int) -> str:
    return MASTER_CF.format(listen=f"127.0.0.1:{port}")


class PostfixInstance:
    def __init__(self, postfix: str, root: Path, port: int, sink_port: int) -> None:
        self.postfix = postfix
        self.root = root
        self.port = port
        self.sink_port = sink_port
        self.config_dir = root / "etc"
        self.started = False

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.postfix, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        """Write the configuration, create the queue, start master, wait for smtpd's port."""
        for sub in ("etc", "queue", "data"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        main = main_cf(self.root, self.sink_port, version(self.postfix))
        (self.config_dir / "main.cf").write_text(main)
        (self.config_dir / "master.cf").write_text(master_cf(self.port))
        # postfix check wants the data directory owned by mail_owner; it creates the queue.
        shutil.chown(self.root / "data", user="postfix")
        for args in (("check",), ("start",)):
            out = self._run(*args)
            if out.returncode != 0:
                raise RuntimeError(
                    f"postfix {args[0]} failed ({out.returncode}): "
                    f"{(out.stdout + out.stderr).strip()}\n{self.log_tail()}"
                )
            self.started = args[0] == "start"
        self._wait_listening(30)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postfix smtpd not listening on 127.0.0.1:{self.port}\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def queued(self) -> dict[str, int]:
        """Messages in each queue directory (a drained instance has none)."""
        counts = {}
        for queue in QUEUES:
            n = 0
            for _dirpath, _dirs, files in os.walk(self.root / "queue" / queue):
                n += len(files)
            counts[queue] = n
        return counts

    def log_tail(self, lines: int = 10) -> str:
        return tail(self.root / "maillog", lines)

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def died(self) -> str:
        """Why the instance is gone, or "" while its master process runs."""
        pid = self.master_pid()
        if self.started and (pid is None or not _alive(pid)):
            return f"postfix master is gone ({self.log_tail(1)})"
        return ""

    def stop(self) -> None:
        """postfix stop (it waits for master to exit); abort and SIGKILL if it lingers."""
        if not self.started:
            return
        pid = self.master_pid()
        try:
            self._run("stop", timeout=30)
        except subprocess.TimeoutExpired:
            self._run("abort", timeout=10)
        if pid is not None and _alive(pid):
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.started = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive; master is not our child, so this reads its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"

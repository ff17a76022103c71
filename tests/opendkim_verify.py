"""Verify a message with OpenDKIM against a key served by the loopback DNS stub.

opendkim-testmsg only asks the system resolver, so this runs inside a private network and
mount namespace (``unshare --net --mount``): loopback up, /etc/resolv.conf bind-mounted to
point at 127.0.0.1, and the DNS stub listening on 127.0.0.1:53 there. Nothing leaves the
namespace. Usage: python -m tests.opendkim_verify MESSAGE_FILE NAME TXT
Exit status: opendkim-testmsg's (0 = signature verified).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile

from tests.dnsstub import DnsStub


async def main(message_file: str, name: str, txt: str) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
        conf.write("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    subprocess.run(["mount", "--bind", conf.name, "/etc/resolv.conf"], check=True)
    stub = DnsStub(port=53)
    await stub.start()
    stub.txt(name, txt)
    try:
        with open(message_file, "rb") as fh:
            proc = await asyncio.create_subprocess_exec(
                "opendkim-testmsg", stdin=fh, stdout=sys.stdout, stderr=sys.stderr
            )
            return await proc.wait()
    finally:
        await stub.stop()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(*sys.argv[1:4])))

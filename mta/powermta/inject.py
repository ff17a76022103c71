"""What a PowerMTA delivery server gets at injection: ``X-Job`` and ``X-Virtual-MTA``.

PowerMTA takes the job id from ``X-Job`` (``process-x-job yes`` in its ``<source>``) and writes
it in the ``jobId`` column of every accounting record of the message, which is how
``relay pmta-accounting`` finds the message again; ``X-Virtual-MTA`` (``process-x-virtual-mta
yes``) picks the VirtualMTA or pool. Both are added in front of the signed message and are not
covered by its DKIM signature (PowerMTA removes them unless told to retain them). Copies the
submitter put in the message are removed first: a client must not choose another message's
job id (its accounting records would land on that message) or another customer's IP pool.
"""

from __future__ import annotations

import re

from relay.directory import DeliveryServerView

# PowerMTA VirtualMTA and pool names: a conservative token (no spaces, nothing to fold).
_VMTA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_UNSAFE = re.compile(rb"[^\x21-\x7e]")
_OURS = (b"x-job", b"x-virtual-mta")


def valid_vmta_name(name: str) -> bool:
    return bool(_VMTA_NAME.match(name))


def injection_headers(server: DeliveryServerView, message_id: str) -> bytes:
    """The header lines to put in front of a message for ``server`` (empty if not PowerMTA)."""
    if not server.powermta:
        return b""
    job = _UNSAFE.sub(b"", message_id.encode("ascii", "ignore"))
    lines = b"X-Job: " + job + b"\r\n"
    if server.powermta_vmta and valid_vmta_name(server.powermta_vmta):
        lines += b"X-Virtual-MTA: " + server.powermta_vmta.encode("ascii") + b"\r\n"
    return lines


def without_injection_headers(message: bytes) -> bytes:
    """``message`` without X-Job / X-Virtual-MTA header fields (folded lines included)."""
    end = message.find(b"\r\n\r\n")
    head_end = len(message) if end < 0 else end + 2
    head = message[:head_end]
    lowered = head.lower()
    if not any(name in lowered for name in _OURS):
        return message
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):  # continuation of the previous field (RFC 5322 2.2.3)
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = name in _OURS
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + message[head_end:]


def injection_body(server: DeliveryServerView, message_id: str, message: bytes) -> bytes:
    """The bytes to hand to ``server``: ``message`` unchanged unless ``server`` is PowerMTA."""
    headers = injection_headers(server, message_id)
    if not headers:
        return message
    return headers + without_injection_headers(message)

"""Who holds a lease: owner ids of this node's processes, and which of them are gone.

A lease owner is ``<node>:<pid>:<random>`` (a webhook worker appends ``/webhooks/...``):
``<node>`` is ``server.node_id`` or the host name, ``<pid>`` the process, ``<random>`` this
incarnation. At start a worker releases the leases of this node's earlier incarnations at once
(``stale``) instead of waiting for them to expire, as Postfix re-queues at once on restart;
leases of any other node, and of live processes of this node, are left to run out.
"""

from __future__ import annotations

import os
import socket
import uuid

# recipients.lease_owner is VARCHAR(64): the node part is cut so a whole owner always fits.
NODE_MAX = 40


def node_name(configured: str = "") -> str:
    """This node's name in lease owners: ``server.node_id``, or the host name."""
    return (configured or socket.gethostname())[:NODE_MAX]


def owner_id(configured: str = "") -> str:
    """A new owner id for this process: ``<node>:<pid>:<random>``."""
    return f"{node_name(configured)}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def node_prefix(owner: str) -> str:
    """``<node>:`` of an owner id made by ``owner_id``: what every owner of the node starts with."""
    return owner.split("/", 1)[0].rsplit(":", 2)[0] + ":"


def stale(found: str, mine: str) -> bool:
    """Whether ``found``, an owner of this node (it starts with ``node_prefix(mine)``), is an
    earlier incarnation: its process is gone, or it had this process's pid (a restart that
    got the same pid, as in a container) under another random part. A live process of this
    node (a sibling worker, or another relay on this host under the same name) is not; nor is
    an owner whose pid a new process reuses: that lease simply expires."""
    incarnation = found.split("/", 1)[0]
    if incarnation == mine.split("/", 1)[0]:
        return False
    try:
        pid = int(incarnation[len(node_prefix(mine)) :].split(":", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited but was not yet reaped still answers ``kill(pid, 0)``. A
    killed relay's children are reaped by PID 1 only, which in a container may do so late or
    never; such a process holds nothing (Linux: its state in /proc/<pid>/stat is Z)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # no /proc (not Linux), or gone meanwhile
        return False
    # The state follows the command name, which is in parentheses and may hold any byte.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state in (b"Z", b"X")

"""The node's limits, whatever its process count: the main process holds the counts.

`relay serve` accepts SMTP in several processes (relay.procs). Limits are the node's, not each
process's: the main process owns the node's counters (a ``MemoryRateLimiter``: send limits,
failed logins, and the API's rate limit when there is no Redis) and its table of open SMTP
connections (total and per client). Its own SMTP server uses them directly; an SMTP worker
process asks over its link to the main process, one JSON line each way:

- ``{"t": "lim", "id": n, "op": ...}`` worker -> main: ``reserve``, ``counts``, ``admit`` (a
  connection) expect ``{"t": "limr", "id": n, ...}`` back; ``add``, ``give`` (a reservation
  given back) and ``leave`` (a connection closed) carry no id and get no answer.

The main process answers from memory with no await in between, so a check and its count are one
step for the whole node: no lock, no file, no database. The cost is one message each way per
connection and per limited recipient, on a loop that is not blocked meanwhile.

Restarts: counts live in the main process, so a worker that dies and is restarted loses none;
the connections it held die with it, and the main process frees their slots (``holder_gone``).
A main process that does not answer within ``ANSWER_TIMEOUT`` (stopped, or badly overloaded)
makes a worker count in its own memory meanwhile (per-process limits, the degraded mode),
with one warning and a back-off before it asks again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from relay.ratelimit import (
    Circuit,
    Decision,
    LimiterUnavailable,
    MemoryRateLimiter,
    Reservation,
    retry_after,
)

log = structlog.get_logger("relay.nodelimits")

# Long enough for a main process that is merely busy (a worker counting alone loosens the
# limits); short enough that a stopped one costs a session a few seconds, once per back-off.
ANSWER_TIMEOUT = 10.0
MAIN = "main"  # the main process's own SMTP server, as a holder of connections

Release = Callable[[], None]


def client_key(ip: str) -> str:
    """Who a limit per client counts: the IPv4 address, or the /64 of an IPv6 address (one
    site's allocation: a client there has 2^64 addresses to rotate through)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class ConnectionTable:
    """Open SMTP connections of the node, in all and per client, and who holds each (the main
    process or a worker), so a worker's death frees its slots."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.open = 0
        self.by_ip: Counter[str] = Counter()
        self._held: dict[str, Counter[str]] = {}

    def admit(self, holder: str, ip: str) -> bool:
        client = client_key(ip)
        if self.open >= self.total or self.by_ip[client] >= self.per_ip:
            return False
        self.open += 1
        self.by_ip[client] += 1
        self._held.setdefault(holder, Counter())[client] += 1
        return True

    def leave(self, holder: str, ip: str) -> None:
        client = client_key(ip)
        held = self._held.get(holder)
        if held is None or held[client] <= 0:
            return  # freed already (the holder was declared gone)
        self._drop(held, client, 1)

    def holder_gone(self, holder: str) -> int:
        """Free every slot ``holder`` had; how many."""
        held = self._held.pop(holder, None)
        if not held:
            return 0
        freed = 0
        for client, n in list(held.items()):
            self._drop(held, client, n)
            freed += n
        return freed

    def _drop(self, held: Counter[str], client: str, n: int) -> None:
        held[client] -= n
        if held[client] <= 0:
            del held[client]
        self.open -= n
        self.by_ip[client] -= n
        if self.by_ip[client] <= 0:
            del self.by_ip[client]


class ConnectionGate(Protocol):
    async def admit(self, ip: str) -> Release | None:
        """A function that frees the slot, or None: over the node's limits."""
        ...


class LocalGate:
    """Admission in the process that holds the table."""

    def __init__(self, table: ConnectionTable, holder: str) -> None:
        self.table, self.holder = table, holder

    async def admit(self, ip: str) -> Release | None:
        return self.admit_now(ip)

    def admit_now(self, ip: str) -> Release | None:
        if not self.table.admit(self.holder, ip):
            return None
        return lambda: self.table.leave(self.holder, ip)


class NodeLimits:
    """The main process's side: the node's counters and connections, and the answers to its
    worker processes' questions."""

    def __init__(self, max_connections: int, max_connections_per_ip: int) -> None:
        self.counters = MemoryRateLimiter()
        self.connections = ConnectionTable(max_connections, max_connections_per_ip)
        self.gate = LocalGate(self.connections, MAIN)

    def handle(self, holder: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """The answer to a worker's ``lim`` message (None: it expects none)."""
        try:
            answer = self._answer(holder, message)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("malformed limits message from a worker", holder=holder, error=repr(exc))
            answer = {"error": repr(exc)}
        if answer is None or "id" not in message:
            return None
        return {"t": "limr", "id": message["id"], **answer}

    def _answer(self, holder: str, m: dict[str, Any]) -> dict[str, Any] | None:
        op, c = m["op"], self.counters
        if op == "reserve":
            index = c.reserve_now(m["key"], float(m["limit"]), float(m["window"]), m["amount"])
            return {"index": index}
        if op == "give":
            c.give_back_now(m["key"], float(m["window"]), int(m["index"]), float(m["amount"]))
            return None
        if op == "counts":
            return {"values": [c.count_now(k, float(w)) for k, w in m["items"]]}
        if op == "add":
            for key, window in m["items"]:
                c.add_now(key, float(window), float(m["amount"]))
            return None
        if op == "admit":
            return {"ok": self.connections.admit(holder, m["ip"])}
        if op == "leave":
            self.connections.leave(holder, m["ip"])
            return None
        raise ValueError(f"unknown op {op!r}")

    def holder_gone(self, holder: str) -> None:
        freed = self.connections.holder_gone(holder)
        if freed:
            log.info("freed the connection slots of a stopped worker", holder=holder, count=freed)


class ParentLink:
    """A worker's questions to the main process, with their answers matched by id; a
    ``Circuit`` stops asking for a while when the main process does not answer."""

    def __init__(self) -> None:
        self.link: Any = None  # relay.procs.Link, set once connected
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.circuit = Circuit(
            "main_process",
            "worker",
            "the main process does not answer; this process counts its own limits meanwhile",
        )

    @property
    def up(self) -> bool:
        return self.link is not None and self.circuit.up

    def tell(self, message: dict[str, Any]) -> None:
        if self.link is not None:
            self.link.send({"t": "lim", **message})

    async def ask(
        self, message: dict[str, Any], late: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """The answer; LimiterUnavailable if none came in time (``late`` then gets it, if it
        ever comes, so what it granted can be given back)."""
        probe = self.circuit.attempt()
        if probe is None or self.link is None:
            raise LimiterUnavailable("the main process is not answering")
        ident = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = fut
        self.link.send({"t": "lim", "id": ident, **message})
        try:
            answer = await asyncio.wait_for(asyncio.shield(fut), ANSWER_TIMEOUT)
        except TimeoutError:
            self._orphan(fut, late)
            self.circuit.failed(f"no answer within {ANSWER_TIMEOUT:g} s", probe)
            raise LimiterUnavailable("the main process did not answer in time") from None
        except BaseException:
            self._orphan(fut, late)
            self.circuit.abandon(probe)
            raise
        self.circuit.succeeded(probe)
        if "error" in answer:
            raise LimiterUnavailable(answer["error"])
        return answer

    @staticmethod
    def _orphan(
        fut: asyncio.Future[dict[str, Any]], late: Callable[[dict[str, Any]], None] | None
    ) -> None:
        if late is not None:
            fut.add_done_callback(lambda f: late(f.result()) if not f.cancelled() else None)

    def resolve(self, message: dict[str, Any]) -> None:
        """An answer from the main process (relay.procs routes ``limr`` here)."""
        fut = self._waiting.pop(message.get("id", -1), None)
        if fut is not None and not fut.done():
            fut.set_result(message)

    def close(self) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        self._waiting.clear()


class ParentLimiter:
    """A worker process's counters: the main process's, or its own while that one does not
    answer."""

    def __init__(self, parent: ParentLink) -> None:
        self.parent = parent
        self.local = MemoryRateLimiter()

    async def count(self, key: str, window: float) -> float:
        return (await self.counts([(key, window)]))[0]

    async def counts(self, items: list[tuple[str, float]]) -> list[float]:
        try:
            answer = await self.parent.ask({"op": "counts", "items": items})
        except LimiterUnavailable:
            return await self.local.counts(items)
        return [float(v) for v in answer["values"]]

    async def add(self, key: str, window: float, amount: float = 1.0) -> None:
        await self.add_many([(key, window)], amount)

    async def add_many(self, items: list[tuple[str, float]], amount: float = 1.0) -> None:
        if self.parent.up:
            self.parent.tell({"op": "add", "items": items, "amount": amount})
        else:
            await self.local.add_many(items, amount)

    async def reserve(
        self, key: str, limit: float, window: float, amount: float = 1.0
    ) -> Reservation | None:
        question = {"op": "reserve", "key": key, "limit": limit, "window": window}
        question["amount"] = amount

        def late(answer: dict[str, Any]) -> None:
            if answer.get("index") is not None:
                self.give_back(Reservation(key, window, int(answer["index"]), amount, self))

        try:
            answer = await self.parent.ask(question, late)
        except LimiterUnavailable:
            return await self.local.reserve(key, limit, window, amount)
        index = answer.get("index")
        return None if index is None else Reservation(key, window, int(index), amount, self)

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        held = await self.reserve(key, limit, window)
        if held is None:
            return Decision(False, float(limit), retry_after(window))
        return Decision(True, 0.0, 0)

    def give_back(self, reservation: Reservation) -> None:
        r = reservation
        self.parent.tell(
            {"op": "give", "key": r.key, "window": r.window, "index": r.index, "amount": r.amount}
        )


class ParentGate:
    """A worker process's connection admission: the main process's table, or its own while
    that one does not answer."""

    def __init__(self, parent: ParentLink, total: int, per_ip: int) -> None:
        self.parent = parent
        self.local = LocalGate(ConnectionTable(total, per_ip), "self")

    async def admit(self, ip: str) -> Release | None:
        def leave() -> None:
            self.parent.tell({"op": "leave", "ip": ip})

        def late(answer: dict[str, Any]) -> None:
            if answer.get("ok"):
                leave()

        try:
            answer = await self.parent.ask({"op": "admit", "ip": ip}, late)
        except LimiterUnavailable:
            return self.local.admit_now(ip)
        return leave if answer.get("ok") else None

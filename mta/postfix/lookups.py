"""The Postfix lookup listeners a node runs (``mx.socketmap_listen``, ``mx.policy_listen``), as
one object with ``start()`` / ``stop(timeout)`` for the node's start and stop sequence."""

from __future__ import annotations

import asyncio

from mta.postfix.answers import DomainSet, RelayDomainAnswers
from mta.postfix.listener import LookupListener
from mta.postfix.policy import PolicyServer
from mta.postfix.socketmap import SocketmapServer
from relay.config import MxSettings


def configured(settings: MxSettings) -> bool:
    return bool(settings.socketmap_listen or settings.policy_listen)


class PostfixLookups:
    def __init__(self, settings: MxSettings, domains: DomainSet) -> None:
        answers = RelayDomainAnswers(domains, settings.lookup_max_stale)
        self.socketmap = (
            SocketmapServer(settings.socketmap_listen, settings, answers)
            if settings.socketmap_listen
            else None
        )
        self.policy = (
            PolicyServer(settings.policy_listen, settings, answers)
            if settings.policy_listen
            else None
        )
        self.listeners: list[LookupListener] = [
            x for x in (self.socketmap, self.policy) if x is not None
        ]

    async def start(self) -> None:
        started: list[LookupListener] = []
        try:
            for listener in self.listeners:
                await listener.start()
                started.append(listener)
        except BaseException:
            await asyncio.gather(*(x.stop(1.0) for x in started))
            raise

    async def stop(self, timeout: float = 5.0) -> None:
        await asyncio.gather(*(x.stop(timeout) for x in self.listeners))

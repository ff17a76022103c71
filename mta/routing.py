"""Which delivery servers carry a user's mail: user -> user group -> servers for a channel.

Mail from a user goes to the delivery servers assigned to the user's group for the
``Transactional`` channel. With several, messages are spread across them in turn and each
message fails over to the next server in the list when a connection fails. With none, there
is no route: the recipients stay queued (deferred, with an event saying why).

Lookups go through the cached ``Directory`` (invalidated on assignment changes), so routing a
message costs no database round trip.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from relay.directory import DeliveryServerView, Directory

CHANNEL = "Transactional"


@dataclass(frozen=True, slots=True)
class Route:
    servers: list[DeliveryServerView]  # in the order to try them
    group_id: int | None = None
    reason: str = ""  # why ``servers`` is empty


@dataclass
class Router:
    directory: Directory
    channel: str = CHANNEL
    _turns: dict[int, itertools.count[int]] = field(default_factory=dict)

    async def route(self, user_id: int) -> Route:
        user = await self.directory.user(user_id)
        if user is None:
            return Route([], None, f"user {user_id} not found")
        servers = await self.directory.routes(user.group_id, self.channel)
        if not servers:
            return Route(
                [],
                user.group_id,
                f"no delivery server assigned to user group {user.group_id} "
                f"for channel {self.channel}",
            )
        # Round robin per group: each message starts at the next server, the rest follow.
        turn = next(self._turns.setdefault(user.group_id, itertools.count())) % len(servers)
        return Route(servers[turn:] + servers[:turn], user.group_id)

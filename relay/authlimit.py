"""Failed logins across connections, processes and nodes: SMTP AUTH and user.login.

A per-connection cap (``smtp.max_auth_failures``) only makes a guesser reconnect. This counts
failures where every connection sees them (the node's counters, or Redis for the cluster;
relay.ratelimit) and refuses further attempts, without checking the password, for a while:

- per client (an IPv4 address or an IPv6 /64): ``per_ip`` failures within ``window`` seconds;
- per username: ``per_user`` failures from anywhere within ``window``, so guessing from many
  addresses is held too.

Neither may lock the real owner out from another address. A client that has signed in as a
user (within ``KNOWN_WINDOW``) is known for that user: the username's failures and its
address's failures for other usernames do not hold it back, only its own failures for that
user (``per_ip`` of them). So an attacker elsewhere, or on a shared address guessing other
accounts, cannot lock out an application that has logged in before; a new address during an
attack on the username waits for the window, like the attacker.

Usernames and addresses are kept as hashes in the counters' keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from relay.nodelimits import client_key
from relay.ratelimit import Counters

# How long a successful login makes its client address known for that user.
KNOWN_WINDOW = 30 * 86400.0

IP, USER = "ip", "user"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class FailureThrottle:
    counters: Counters
    name: str  # the key prefix: "smtp" or "login"
    window: float
    per_ip: int
    per_user: int

    def _keys(self, username: str, ip: str) -> tuple[str, str, str, str]:
        user = username.strip().lower()
        client = client_key(ip)
        pair = _digest(user, client)
        return (
            f"authfail:{self.name}:ip:{client}",
            f"authfail:{self.name}:user:{_digest(user)}",
            f"authfail:{self.name}:pair:{pair}",
            f"authok:{self.name}:{pair}",
        )

    async def check(self, username: str, ip: str) -> str | None:
        """None: go ahead and check the password; the attempt counts as a failure from now
        on, until ``succeeded`` or ``undecided`` says otherwise (so concurrent attempts see
        each other, rather than all passing before the first failure is counted). ``"ip"``
        or ``"user"``: refuse, and why; nothing is counted."""
        ip_key, user_key, pair_key, known_key = self._keys(username, ip)
        by_ip, by_user, by_pair, known = await self.counters.counts(
            [
                (ip_key, self.window),
                (user_key, self.window),
                (pair_key, self.window),
                (known_key, KNOWN_WINDOW),
            ]
        )
        if known > 0:
            if by_pair >= self.per_ip:
                return IP
        elif by_ip >= self.per_ip:
            return IP
        elif by_user >= self.per_user:
            return USER
        await self._count(username, ip, 1.0)
        return None

    async def succeeded(self, username: str, ip: str) -> None:
        """The password was right: not a failure, and the address is known for the user."""
        await self._count(username, ip, -1.0)
        await self.counters.add(self._keys(username, ip)[3], KNOWN_WINDOW)

    async def undecided(self, username: str, ip: str) -> None:
        """The password could not be checked (storage trouble): not a failure either."""
        await self._count(username, ip, -1.0)

    async def _count(self, username: str, ip: str, amount: float) -> None:
        ip_key, user_key, pair_key, _ = self._keys(username, ip)
        await self.counters.add_many(
            [(ip_key, self.window), (user_key, self.window), (pair_key, self.window)], amount
        )

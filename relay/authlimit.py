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

Attempts still being decided are counted apart from failures: a client with no recent failure
is never held back by its own logins in flight (twenty sessions of one application opening at
once after a restart all sign in), but once failures start, attempts in flight count as
failures, so parallel guessers see each other instead of all passing before the first failure
is counted. A guesser thus gets one parallel burst at most per window beyond the limits.

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

    def _keys(self, username: str, ip: str) -> tuple[list[str], list[str], str]:
        """(failure keys: ip, user, pair), (in-flight keys: the same three), the known key."""
        user = username.strip().lower()
        client = client_key(ip)
        pair = _digest(user, client)
        scopes = (f"ip:{client}", f"user:{_digest(user)}", f"pair:{pair}")
        return (
            [f"authfail:{self.name}:{scope}" for scope in scopes],
            [f"authtry:{self.name}:{scope}" for scope in scopes],
            f"authok:{self.name}:{pair}",
        )

    async def check(self, username: str, ip: str) -> str | None:
        """None: go ahead and check the password, then say how it went (``succeeded``,
        ``failed`` or ``undecided``). ``"ip"`` or ``"user"``: refuse, and why; nothing is
        counted."""
        failures, tries, known_key = self._keys(username, ip)
        counted = await self.counters.counts(
            [*((k, self.window) for k in failures + tries), (known_key, KNOWN_WINDOW)]
        )
        by_ip, by_user, by_pair, try_ip, try_user, try_pair, known = counted

        def over(failed: float, in_flight: float, limit: int) -> bool:
            # Attempts in flight count only where failures have started.
            return failed >= limit or (failed > 0 and failed + in_flight >= limit)

        if known > 0:
            if over(by_pair, try_pair, self.per_ip):
                return IP
        elif over(by_ip, try_ip, self.per_ip):
            return IP
        elif over(by_user, try_user, self.per_user):
            return USER
        await self._add(tries, 1.0)
        return None

    async def succeeded(self, username: str, ip: str) -> None:
        """The password was right: the address is known for the user from now on."""
        _, tries, known_key = self._keys(username, ip)
        await self._add(tries, -1.0)
        await self.counters.add(known_key, KNOWN_WINDOW)

    async def failed(self, username: str, ip: str) -> None:
        """The password was wrong (or the user unknown): one failure."""
        failures, tries, _ = self._keys(username, ip)
        await self._add(tries, -1.0)
        await self._add(failures, 1.0)

    async def undecided(self, username: str, ip: str) -> None:
        """The password could not be checked (storage trouble): not a failure."""
        _, tries, _ = self._keys(username, ip)
        await self._add(tries, -1.0)

    async def _add(self, keys: list[str], amount: float) -> None:
        await self.counters.add_many([(k, self.window) for k in keys], amount)

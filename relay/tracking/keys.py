"""Where the tracking secret lives.

``tracking.secret`` when configured (every node must then be given the same value); otherwise
a random secret generated once into the database (table ``cluster_secrets``, sealed with the
key-encryption key when there is one). The database is what every node of a cluster already
shares, and it travels with the messages whose links depend on it: a restored backup keeps
the links of mail already sent working, and a node cannot start with a different key by
mistake. The secret is never logged.
"""

from __future__ import annotations

import base64
import os

from relay.services import Services
from relay.store.repos import cluster_secrets
from relay.tracking.tokens import SECRET_BYTES, TokenCodec, decode_secret

SECRET_NAME = "tracking"  # noqa: S105  (the row name, not a secret)


async def load_codec(services: Services) -> TokenCodec:
    configured = services.settings.tracking.secret
    if configured:
        return TokenCodec(decode_secret(configured))
    # Read first: every process of every node loads it at start, only the first one writes.
    async with services.db.read() as conn:
        stored = await cluster_secrets.get(conn, SECRET_NAME)
    if stored is None:
        candidate = services.box.seal(base64.b64encode(os.urandom(SECRET_BYTES)).decode())
        async with services.db.write() as conn:
            stored = await cluster_secrets.get_or_create(conn, SECRET_NAME, candidate)
    return TokenCodec(decode_secret(services.box.open(stored)))

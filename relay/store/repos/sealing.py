"""Stored secrets written before a key-encryption key was in use: found and sealed in place.

Every column ``SecretBox`` seals is listed here. Sealing is idempotent and safe while other
nodes run: a row is rewritten only if it still holds the plaintext that was read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Table, and_, not_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.secrets import SEALED_PREFIX
from relay.store.schema import cluster_secrets, delivery_servers, gateway_domains

SEALED_COLUMNS: list[tuple[Table, Column[Any]]] = [
    (gateway_domains, gateway_domains.c.dkim_private_key),
    (gateway_domains, gateway_domains.c.signing_key),
    (delivery_servers, delivery_servers.c.password),
    (cluster_secrets, cluster_secrets.c.value),
]


async def seal_plaintext(conn: AsyncConnection, seal: Callable[[str], str]) -> int:
    """Seal every stored secret that is still plaintext; returns how many were sealed."""
    sealed = 0
    for table, column in SEALED_COLUMNS:
        (pk,) = table.primary_key.columns
        plaintext = and_(column.is_not(None), column != "", not_(column.startswith(SEALED_PREFIX)))
        rows = (await conn.execute(select(pk, column).where(plaintext))).all()
        for row_id, value in rows:
            result = await conn.execute(
                update(table)
                .where(pk == row_id, column == value)
                .values({column.name: seal(value)})
            )
            sealed += result.rowcount or 0
    return sealed

"""The Alembic migrations and relay/store/schema.py describe the same schema, on both backends."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from relay.services import Services
from relay.store import schema


def _diff(sync_conn: Any) -> list[Any]:
    ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, schema.metadata))


async def test_migrated_database_matches_schema_py(services: Services) -> None:
    async with services.db.read() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []

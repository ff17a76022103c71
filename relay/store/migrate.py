"""Schema migrations (Alembic), run in-process against the configured database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, select

from relay.store import schema
from relay.store.db import Database, utcnow

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(connection: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config(None)).get_current_head()
    assert head is not None
    return head


async def current_revision(db: Database) -> str | None:
    async with db.read() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def upgrade(db: Database) -> None:
    """Bring the schema to head, then make sure the rows every install needs exist."""
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_config(sync), "head"))
    async with db.write() as conn:
        found = await conn.scalar(
            select(schema.user_groups.c.id).where(schema.user_groups.c.id == 1)
        )
        if found is None:
            ts = utcnow()
            await conn.execute(
                insert(schema.user_groups).values(
                    id=1, name="Default User Group", created_at=ts, updated_at=ts
                )
            )
            if not db.is_sqlite:
                # An explicit id does not advance the serial sequence.
                await conn.exec_driver_sql(
                    "SELECT setval(pg_get_serial_sequence('user_groups', 'id'), "
                    "(SELECT max(id) FROM user_groups))"
                )

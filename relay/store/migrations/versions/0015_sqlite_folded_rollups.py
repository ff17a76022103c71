"""event rollups on SQLite: counted per write transaction instead of per row

SQLite's row trigger ``events_rollup`` (migration 0003) did five upserts per event while the
write lock was held. It is replaced by a row trigger that only notes the event's id in
``event_unfolded``; the writer counts the noted events with set-based statements before it
commits (relay/store/rollups.py). What the rollup tables hold does not change, and nothing is
pending when this revision runs (the old trigger counted every existing event).

On PostgreSQL the table exists too (one schema for both backends) and stays empty: its
statement trigger already counts a whole statement at once.

Revision ID: 0015
Revises: 0014
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTE_TRIGGER = """
CREATE TRIGGER events_unfolded AFTER INSERT ON events
BEGIN
    INSERT INTO event_unfolded (id) VALUES (NEW.id);
END
"""


def upgrade() -> None:
    op.create_table(
        "event_unfolded",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_unfolded")),
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS events_rollup")
        op.execute(NOTE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Count what is still pending the new way, then put the row trigger back.
        from relay.store.rollups import FOLD, PENDING

        if op.get_bind().exec_driver_sql(PENDING).first() is not None:
            for statement in FOLD:
                op.execute(statement)
        op.execute("DROP TRIGGER IF EXISTS events_unfolded")
        op.execute(_migration_0003().SQLITE_ROLLUP_TRIGGER)  # frozen there
    op.drop_table("event_unfolded")


def _migration_0003() -> Any:
    path = Path(__file__).with_name("0003_events_at_scale.py")
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

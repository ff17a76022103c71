"""scheduled sending and per-recipient bodies: messages.not_before, recipients.body and
the index of scheduled recipients

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns without defaults: instant on both backends, whatever the queue's size.
    op.add_column("messages", sa.Column("not_before", sa.Float(), nullable=True))
    op.add_column("recipients", sa.Column("body", sa.LargeBinary(), nullable=True))
    scheduled = sa.text("state = 'queued' AND next_attempt_at > created_at")
    op.create_index(
        "ix_recipients_scheduled",
        "recipients",
        ["next_attempt_at"],
        sqlite_where=scheduled,
        postgresql_where=scheduled,
    )


def downgrade() -> None:
    op.drop_index("ix_recipients_scheduled", table_name="recipients")
    # Plain DROP COLUMN (SQLite 3.35+): a batch "recreate" of messages would trip the triggers
    # on events that read it (events_rollup).
    op.execute("ALTER TABLE recipients DROP COLUMN body")
    op.execute("ALTER TABLE messages DROP COLUMN not_before")

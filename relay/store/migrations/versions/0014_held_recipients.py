"""recipients on hold: the index of held recipients

A recipient put on hold (relay queue hold, queue.hold) has the state 'held', which no claim
takes; the state is a value of the existing column, so only its partial index is new.

Revision ID: 0014
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Built by one read of recipients; nothing enters it (no recipient is held before this
    # revision).
    held = sa.text("state = 'held'")
    op.create_index(
        "ix_recipients_held",
        "recipients",
        ["next_attempt_at"],
        sqlite_where=held,
        postgresql_where=held,
    )


def downgrade() -> None:
    # An older relay knows no 'held': give held recipients back to the queue first.
    op.execute(
        "UPDATE recipients SET state = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END "
        "WHERE state = 'held'"
    )
    op.drop_index("ix_recipients_held", table_name="recipients")

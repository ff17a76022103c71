"""powermta delivery servers: X-Job / X-Virtual-MTA at injection

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery_servers") as batch:
        batch.add_column(
            sa.Column("powermta", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
        batch.add_column(
            sa.Column("powermta_vmta", sa.String(length=255), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("delivery_servers") as batch:
        batch.drop_column("powermta_vmta")
        batch.drop_column("powermta")

"""the MX listener: stored reports it could not use

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mx_reports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=255), server_default="", nullable=False),
        sa.Column("client_ip", sa.String(length=64), server_default="", nullable=False),
        sa.Column("mail_from", sa.String(length=320), server_default="", nullable=False),
        sa.Column("rcpt", sa.String(length=320), server_default="", nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mx_reports")),
    )
    op.create_index(op.f("ix_mx_reports_created_at"), "mx_reports", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_mx_reports_created_at"), table_name="mx_reports")
    op.drop_table("mx_reports")

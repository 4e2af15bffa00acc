"""gdpr window: node countries (data residency), forced maintenance-window steps, breaches

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosting_nodes") as batch:
        batch.add_column(sa.Column("country", sa.String(length=2), nullable=True))
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("force_window", sa.Text(), nullable=True))
    op.create_table(
        "breaches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("brand", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_by", sa.String(length=100), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=100), nullable=True),
        sa.Column("last_reminded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reminders", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_breaches_closed_at", "breaches", ["closed_at"])


def downgrade() -> None:
    op.drop_index("ix_breaches_closed_at", table_name="breaches")
    op.drop_table("breaches")
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("force_window")
    with op.batch_alter_table("hosting_nodes") as batch:
        batch.drop_column("country")

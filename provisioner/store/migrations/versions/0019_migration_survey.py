"""migration survey: the report, when it ran, and an ops override of its verdict

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("migrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("survey", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("surveyed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("override_reason", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("override_by", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("override_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("migrations", schema=None) as batch_op:
        for column in ("override_at", "override_by", "override_reason", "surveyed_at", "survey"):
            batch_op.drop_column(column)

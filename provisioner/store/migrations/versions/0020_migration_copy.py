"""migration copy, verify, cut-over: the copy time used across retries, the parts'
checkpoints and outcomes, the live progress, the reconciliation and cut-over reports

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("migrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("copy_seconds", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("copy", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("progress", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("reconciliation", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("cutover", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("migrations", schema=None) as batch_op:
        for column in ("cutover", "reconciliation", "progress", "copy", "copy_seconds"):
            batch_op.drop_column(column)

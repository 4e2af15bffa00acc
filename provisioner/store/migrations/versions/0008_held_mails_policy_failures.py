"""Held mails (their sealed context) and the mail policy's failure count per node

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_mails") as batch:
        batch.add_column(sa.Column("sealed", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("hosting_nodes") as batch:
        batch.add_column(sa.Column("mail_policy_failures", sa.Integer(), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("hosting_nodes") as batch:
        batch.drop_column("mail_policy_failures")
    with op.batch_alter_table("outbox_mails") as batch:
        batch.drop_column("sealed")

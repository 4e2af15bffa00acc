"""domains registry: what we did at the registry before its cut-off (deleted, set not to
renew, restored, withdrawn with a refund), when the domain was activated (name servers
set), and whether a registration is to be refunded

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("domains") as batch:
        batch.add_column(sa.Column("registry_action", sa.String(length=24), nullable=True))
        batch.add_column(sa.Column("registry_action_on", sa.Date(), nullable=True))
        batch.add_column(sa.Column("activated_on", sa.Date(), nullable=True))
        batch.add_column(sa.Column("refund_due", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("domains") as batch:
        batch.drop_column("refund_due")
        batch.drop_column("activated_on")
        batch.drop_column("registry_action_on")
        batch.drop_column("registry_action")

"""hosting nodes say whether they are throwaway hosts (never inferred from the controller)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every node registered before this revision is treated as a real node: strict
    # host-key checking. Throwaway hosts are registered again by the devstack.
    with op.batch_alter_table("hosting_nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("throwaway", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("hosting_nodes", schema=None) as batch_op:
        batch_op.drop_column("throwaway")

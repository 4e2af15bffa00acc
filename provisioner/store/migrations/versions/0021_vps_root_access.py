"""A VPS's root password, sealed, from its creation until its one-time link holds it

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "vps_root_access",
        sa.Column("vps_id", sa.Integer(), sa.ForeignKey("vps_machines.id"), primary_key=True),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("issued_at", TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("vps_root_access")

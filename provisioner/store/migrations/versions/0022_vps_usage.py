"""Fair-use metering: samples of each VPS's usage counters

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "vps_usage_samples",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("vps_id", sa.Integer(), sa.ForeignKey("vps_machines.id"), nullable=False),
        sa.Column("taken_at", TS, nullable=False),
        sa.Column("running", sa.Boolean(), nullable=False),
        sa.Column("cpu_ns", sa.BigInteger(), nullable=True),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("io_read_bytes", sa.BigInteger(), nullable=True),
        sa.Column("io_write_bytes", sa.BigInteger(), nullable=True),
        sa.Column("io_read_ops", sa.BigInteger(), nullable=True),
        sa.Column("io_write_ops", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_vps_usage_samples_vps_taken", "vps_usage_samples", ["vps_id", "taken_at"])


def downgrade() -> None:
    op.drop_index("ix_vps_usage_samples_vps_taken", table_name="vps_usage_samples")
    op.drop_table("vps_usage_samples")

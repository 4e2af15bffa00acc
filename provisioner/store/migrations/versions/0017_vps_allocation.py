"""VPS hosts, machines and address leases: allocation we own

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "vps_hosts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("address", sa.String(253), nullable=False),
        sa.Column("ssh_user", sa.String(32), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("throwaway", sa.Boolean(), nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("country", sa.String(2), nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "vps_machines",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.Integer(), sa.ForeignKey("services.id"), nullable=False, unique=True),
        sa.Column("host_id", sa.Integer(), sa.ForeignKey("vps_hosts.id"), nullable=False, index=True),
        sa.Column("hostname", sa.String(253), nullable=False),
        sa.Column("plan", sa.String(40), nullable=False),
        sa.Column("image", sa.String(40), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "vps_address_leases",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("host_id", sa.Integer(), sa.ForeignKey("vps_hosts.id"), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("vps_id", sa.Integer(), sa.ForeignKey("vps_machines.id"), nullable=False),
        sa.Column("leased_at", TS, nullable=False),
        sa.Column("released_at", TS, nullable=True),
    )
    op.create_index("uq_vps_address_live", "vps_address_leases", ["host_id", "address"], unique=True,
                    sqlite_where=sa.text("released_at IS NULL"),
                    postgresql_where=sa.text("released_at IS NULL"))
    op.create_index("ix_vps_address_released", "vps_address_leases", ["host_id", "released_at"])


def downgrade() -> None:
    op.drop_table("vps_address_leases")
    op.drop_table("vps_machines")
    op.drop_table("vps_hosts")

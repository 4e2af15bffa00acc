"""hosting nodes, hosting accounts, one-time credential links

Revision ID: 0004
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hosting_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("address", sa.String(length=253), nullable=False),
        sa.Column("ssh_user", sa.String(length=32), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("capacity_accounts", sa.Integer(), nullable=False),
        sa.Column("capacity_disk_mb", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "hosting_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=32), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("plan", sa.String(length=16), nullable=False),
        sa.Column("disk_mb", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["hosting_nodes.id"]),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("service_id"),
        sa.UniqueConstraint("username"),
    )
    with op.batch_alter_table("hosting_accounts", schema=None) as batch_op:
        batch_op.create_index("ix_hosting_accounts_node_id", ["node_id"], unique=False)
    op.create_table(
        "credential_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    with op.batch_alter_table("credential_links", schema=None) as batch_op:
        batch_op.create_index("ix_credential_links_service_id", ["service_id"], unique=False)


def downgrade() -> None:
    op.drop_table("credential_links")
    op.drop_table("hosting_accounts")
    op.drop_table("hosting_nodes")

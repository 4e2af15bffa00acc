"""domains: our record of each domain registration

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "domains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("tld", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("roid", sa.String(length=100), nullable=True),
        sa.Column("sponsor", sa.String(length=32), nullable=True),
        sa.Column("registrant", sa.String(length=16), nullable=True),
        sa.Column("contacts", sa.JSON(), nullable=False),
        sa.Column("nameservers", sa.JSON(), nullable=False),
        sa.Column("statuses", sa.JSON(), nullable=False),
        sa.Column("privacy", sa.Boolean(), nullable=False),
        sa.Column("manager", sa.JSON(), nullable=True),
        sa.Column("payer", sa.JSON(), nullable=True),
        sa.Column("registered_on", sa.Date(), nullable=True),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("transfer_auth", sa.LargeBinary(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("pending", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("service_id"),
    )
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_domains_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_domains_expires_on"), ["expires_on"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_domains_expires_on"))
        batch_op.drop_index(batch_op.f("ix_domains_name"))
    op.drop_table("domains")

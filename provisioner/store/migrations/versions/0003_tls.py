"""tls certificates and acme accounts

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-22 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("directory", sa.String(length=500), nullable=False),
        sa.Column("key_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("account_uri", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("directory"),
    )
    op.create_table(
        "tls_certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=True),
        sa.Column("primary_name", sa.String(length=253), nullable=False),
        sa.Column("names", sa.JSON(), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("chain_pem", sa.Text(), nullable=False),
        sa.Column("key_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("challenges", sa.JSON(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tls_certificates", schema=None) as batch_op:
        batch_op.create_index("ix_tls_certificates_name", ["primary_name", "issued_at"], unique=False)
        batch_op.create_index("ix_tls_certificates_not_after", ["not_after"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tls_certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_tls_certificates_not_after")
        batch_op.drop_index("ix_tls_certificates_name")
    op.drop_table("tls_certificates")
    op.drop_table("acme_accounts")

"""migration intake: ordered migrations, their sealed sources and one-time intake links

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "migrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("hosting_service_id", sa.Integer(), nullable=True),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("charge_gross", sa.Numeric(12, 2), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("source_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_by", sa.String(length=100), nullable=True),
        sa.Column("wiped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("wipe_reason", sa.String(length=40), nullable=True),
        sa.Column("migration_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.ForeignKeyConstraint(["hosting_service_id"], ["services.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("service_id"),
    )
    with op.batch_alter_table("migrations", schema=None) as batch_op:
        batch_op.create_index("ix_migrations_updated_at", ["updated_at"], unique=False)
    op.create_table(
        "migration_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    with op.batch_alter_table("migration_links", schema=None) as batch_op:
        batch_op.create_index("ix_migration_links_service_id", ["service_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("migration_links", schema=None) as batch_op:
        batch_op.drop_index("ix_migration_links_service_id")
    op.drop_table("migration_links")
    with op.batch_alter_table("migrations", schema=None) as batch_op:
        batch_op.drop_index("ix_migrations_updated_at")
    op.drop_table("migrations")

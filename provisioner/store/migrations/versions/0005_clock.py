"""the lifecycle clock: service clock/hold columns, renewals, stage records, quota marks

Revision ID: 0005
Revises: 0002, 0003, 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = ("0002", "0003", "0004")
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.add_column(sa.Column("clock_on", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("held", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column("hold_reason", sa.Text(), nullable=True))
        batch_op.create_index("ix_services_clock_on", ["clock_on"], unique=False)
    # Services that already have an expiry are looked at by the next sweep, which sets
    # their real next date.
    op.execute("UPDATE services SET clock_on = expires_on WHERE expires_on IS NOT NULL")
    with op.batch_alter_table("hosting_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("over_quota_since", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("backups_excluded", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.create_table(
        "renewals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("term_expiry", sa.Date(), nullable=False),
        sa.Column("months", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("proforma_id", sa.Integer(), nullable=False),
        sa.Column("fee_added", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"]),
        sa.ForeignKeyConstraint(["item_id"], ["order_items.id"]),
        sa.ForeignKeyConstraint(["proforma_id"], ["proformas.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("service_id", "term_expiry", name="uq_renewals_service_term"),
        sa.UniqueConstraint("order_id"),
        sa.UniqueConstraint("item_id"),
        sa.UniqueConstraint("proforma_id"),
    )
    with op.batch_alter_table("renewals", schema=None) as batch_op:
        batch_op.create_index("ix_renewals_service_id", ["service_id"], unique=False)
    op.create_table(
        "stage_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=24), nullable=False),
        sa.Column("term_expiry", sa.Date(), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("done_on", sa.Date(), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("service_id", "stage", "term_expiry",
                            name="uq_stage_records_service_stage"),
    )
    with op.batch_alter_table("stage_records", schema=None) as batch_op:
        batch_op.create_index("ix_stage_records_service_id", ["service_id"], unique=False)


def downgrade() -> None:
    op.drop_table("stage_records")
    op.drop_table("renewals")
    with op.batch_alter_table("hosting_accounts", schema=None) as batch_op:
        batch_op.drop_column("backups_excluded")
        batch_op.drop_column("over_quota_since")
    with op.batch_alter_table("services", schema=None) as batch_op:
        batch_op.drop_index("ix_services_clock_on")
        batch_op.drop_column("hold_reason")
        batch_op.drop_column("held")
        batch_op.drop_column("clock_on")

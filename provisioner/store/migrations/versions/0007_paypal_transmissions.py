"""PayPal transmission ids, each usable once (a captured delivery cannot be replayed)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "paypal_transmissions",
        sa.Column("transmission_id", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("transmission_id"),
    )
    op.create_index("ix_paypal_transmissions_expires_at", "paypal_transmissions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_paypal_transmissions_expires_at", table_name="paypal_transmissions")
    op.drop_table("paypal_transmissions")

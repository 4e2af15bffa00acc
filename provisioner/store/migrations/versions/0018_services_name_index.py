"""An index on services (name, kind): a site's other services found by name

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_services_name_kind", "services", ["name", "kind"])


def downgrade() -> None:
    op.drop_index("ix_services_name_kind", table_name="services")

"""backups restic: backup hosts, each node's restic repository (sealed password), and the
state of the backup jobs per repository (ops are alerted once per failure)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backup_hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("address", sa.String(length=253), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("known_hosts", sa.Text(), nullable=False),
        sa.Column("root", sa.String(length=200), nullable=False),
        sa.Column("throwaway", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "backup_repositories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("sftp_user", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("sealed_password", sa.LargeBinary(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["hosting_nodes.id"]),
        sa.ForeignKeyConstraint(["host_id"], ["backup_hosts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("node_id"),
        sa.UniqueConstraint("sftp_user"),
    )
    with op.batch_alter_table("backup_repositories") as batch:
        batch.create_index("ix_backup_repositories_host_id", ["host_id"], unique=False)
    op.create_table(
        "backup_checks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_ok_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alerted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["repository_id"], ["backup_repositories.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("repository_id", "kind", name="uq_backup_checks_repo_kind"),
    )


def downgrade() -> None:
    op.drop_table("backup_checks")
    with op.batch_alter_table("backup_repositories") as batch:
        batch.drop_index("ix_backup_repositories_host_id")
    op.drop_table("backup_repositories")
    op.drop_table("backup_hosts")

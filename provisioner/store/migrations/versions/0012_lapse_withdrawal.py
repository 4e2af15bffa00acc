"""Unpaid new orders lapse (proformas.lapses_on, indexed for open proformas); withdrawals:
credit notes (immutable, gapless per brand and year) and their refunds

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_OPEN = sa.text("state = 'open'")


def upgrade() -> None:
    with op.batch_alter_table("proformas") as batch:
        batch.add_column(sa.Column("lapses_on", sa.Date(), nullable=True))
    op.create_index("ix_proformas_open_lapses_on", "proformas", ["lapses_on"],
                    sqlite_where=_OPEN, postgresql_where=_OPEN)
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("brand", sa.String(length=16), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("net", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("vat", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("gross", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"]),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("number"),
        sa.UniqueConstraint("service_id"),
        sa.UniqueConstraint("brand", "year", "seq", name="uq_credit_notes_brand_year_seq"),
    )
    op.create_index("ix_credit_notes_invoice_id", "credit_notes", ["invoice_id"])
    op.create_index("ix_credit_notes_customer_id", "credit_notes", ["customer_id"])
    op.create_table(
        "refunds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("credit_note_id", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.Integer(), nullable=True),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("provider_ref", sa.String(length=200), nullable=True),
        sa.Column("payer_iban", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["credit_note_id"], ["credit_notes.id"]),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("credit_note_id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    _credit_notes_immutable()


def _credit_notes_immutable() -> None:
    """Issued credit notes never change, like invoices: the database refuses it."""
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER credit_notes_no_{verb.lower()} BEFORE {verb} ON credit_notes "
                "BEGIN SELECT RAISE(ABORT, 'credit notes are immutable once issued'); END"
            )
    else:
        op.execute(
            "CREATE FUNCTION credit_notes_immutable() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'credit notes are immutable once issued'; END $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER credit_notes_immutable BEFORE UPDATE OR DELETE ON credit_notes "
            "FOR EACH ROW EXECUTE FUNCTION credit_notes_immutable()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS credit_notes_no_update")
        op.execute("DROP TRIGGER IF EXISTS credit_notes_no_delete")
    else:
        op.execute("DROP TRIGGER IF EXISTS credit_notes_immutable ON credit_notes")
        op.execute("DROP FUNCTION IF EXISTS credit_notes_immutable()")
    op.drop_table("refunds")
    op.drop_index("ix_credit_notes_customer_id", table_name="credit_notes")
    op.drop_index("ix_credit_notes_invoice_id", table_name="credit_notes")
    op.drop_table("credit_notes")
    op.drop_index("ix_proformas_open_lapses_on", table_name="proformas")
    with op.batch_alter_table("proformas") as batch:
        batch.drop_column("lapses_on")

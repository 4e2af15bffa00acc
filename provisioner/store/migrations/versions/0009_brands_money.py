"""brands money: the brand of customers, proformas and invoices; number sequences per
brand and year; the issuer stored on proformas; paper invoices (issue 17 items 1, 12)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER invoices_no_{verb.lower()} BEFORE {verb} ON invoices "
    "BEGIN SELECT RAISE(ABORT, 'invoices are immutable once issued'); END"
    for verb in ("UPDATE", "DELETE")
]


def _brand_column() -> sa.Column[str]:  # the brand code, FCB for what exists
    return sa.Column("brand", sa.String(16), nullable=False, server_default="fcb")


def _counters(brand: bool) -> None:
    """Rebuild ``counters`` with (kind, brand, year) or (kind, year) as its key, rows kept."""
    key = ["kind", "brand", "year"] if brand else ["kind", "year"]
    columns: list[sa.schema.SchemaItem] = [sa.Column("kind", sa.String(16), nullable=False)]
    if brand:
        columns.append(sa.Column("brand", sa.String(16), nullable=False, server_default="fcb"))
    columns += [sa.Column("year", sa.Integer(), nullable=False),
                sa.Column("last", sa.Integer(), nullable=False),
                sa.PrimaryKeyConstraint(*key, name="pk_counters_" + "_".join(key))]
    op.create_table("counters_new", *columns)
    if brand:
        op.execute("INSERT INTO counters_new (kind, brand, year, last) "
                   "SELECT kind, 'fcb', year, last FROM counters")
    else:  # back to one sequence per kind and year: FCB's numbers are the ones kept
        op.execute("INSERT INTO counters_new (kind, year, last) "
                   "SELECT kind, year, last FROM counters WHERE brand = 'fcb'")
    op.drop_table("counters")
    op.rename_table("counters_new", "counters")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # plain ADD COLUMN (constant defaults): SQLite need not rebuild these tables, which
    # other tables reference (a rebuild would trip their foreign keys)
    op.add_column("customers", _brand_column())
    # A customer is the brand it ordered from first (FCB if it never ordered).
    op.execute("UPDATE customers SET brand = COALESCE((SELECT o.brand FROM orders o "
               "WHERE o.customer_id = customers.id ORDER BY o.id LIMIT 1), 'fcb')")
    op.add_column("orders", sa.Column("paper_invoice", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.add_column("proformas", _brand_column())
    op.add_column("proformas", sa.Column("issuer", sa.JSON(), nullable=True))
    op.execute("UPDATE proformas SET brand = (SELECT o.brand FROM orders o "
               "WHERE o.id = proformas.order_id)")
    _counters(brand=True)

    # invoices: immutable (a trigger refuses UPDATE and DELETE), so the trigger steps
    # aside while the new columns are filled for the invoices issued so far; SQLite
    # rebuilds the table for the new unique key (no table references invoices yet)
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS invoices_no_update")
        op.execute("DROP TRIGGER IF EXISTS invoices_no_delete")
    else:
        op.execute("ALTER TABLE invoices DISABLE TRIGGER invoices_immutable")
    with op.batch_alter_table("invoices") as batch:
        batch.add_column(_brand_column())
        batch.add_column(sa.Column("to_post", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.drop_constraint("uq_invoices_year_seq", type_="unique")
        batch.create_unique_constraint("uq_invoices_brand_year_seq", ["brand", "year", "seq"])
    op.execute("UPDATE invoices SET brand = (SELECT p.brand FROM proformas p "
               "WHERE p.id = invoices.proforma_id)")
    if dialect == "sqlite":
        for sql in _SQLITE_TRIGGERS:
            op.execute(sql)
    else:
        op.execute("ALTER TABLE invoices ENABLE TRIGGER invoices_immutable")

    op.create_table(
        "invoice_postings",
        sa.Column("invoice_id", sa.Integer(), sa.ForeignKey("invoices.id"), primary_key=True),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("posted_by", sa.String(100), nullable=False),
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_table("invoice_postings")
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS invoices_no_update")
        op.execute("DROP TRIGGER IF EXISTS invoices_no_delete")
    else:
        op.execute("ALTER TABLE invoices DISABLE TRIGGER invoices_immutable")
    with op.batch_alter_table("invoices") as batch:
        batch.drop_constraint("uq_invoices_brand_year_seq", type_="unique")
        batch.create_unique_constraint("uq_invoices_year_seq", ["year", "seq"])
        batch.drop_column("to_post")
        batch.drop_column("brand")
    if dialect == "sqlite":
        for sql in _SQLITE_TRIGGERS:
            op.execute(sql)
    else:
        op.execute("ALTER TABLE invoices ENABLE TRIGGER invoices_immutable")
    _counters(brand=False)
    with op.batch_alter_table("proformas") as batch:
        batch.drop_column("issuer")
        batch.drop_column("brand")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("paper_invoice")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("brand")

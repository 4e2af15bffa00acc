"""Gapless numbering per (kind, brand, year).

Each brand numbers its own documents (proformas, invoices, credit notes, ...): the
counter row of ``(kind, brand, year)`` is bumped inside the caller's transaction, under a
row lock on PostgreSQL (SELECT ... FOR UPDATE) and under SQLite's single-writer lock
(BEGIN IMMEDIATE). If the caller's transaction rolls back, so does the bump: a number is
used exactly when the row that carries it is committed.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from provisioner.domain.policy import get_brand
from provisioner.store.models import Counter


def counter_row(session: Session, kind: str, brand: str, year: int) -> Counter:
    """The counter row of ``(kind, brand, year)``, created at 0 if new, locked."""
    code = get_brand(brand).code  # an unknown brand is InvalidInput, never a new sequence
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        insert(Counter).values(kind=kind, brand=code, year=year, last=0).on_conflict_do_nothing()
    )
    return session.execute(
        select(Counter)
        .where(Counter.kind == kind, Counter.brand == code, Counter.year == year)
        .with_for_update()
    ).scalar_one()


def next_number(session: Session, kind: str, brand: str, year: int) -> int:
    """The next number of ``kind`` (``"proforma"``, ``"invoice"``, ...) in ``brand``'s
    sequence of ``year``: 1, 2, 3, ... with no gap."""
    row = counter_row(session, kind, brand, year)
    row.last += 1
    session.flush()
    return row.last

"""Gapless numbering per (kind, year).

The counter row is bumped inside the caller's transaction, under a row lock on
PostgreSQL (SELECT ... FOR UPDATE) and under SQLite's single-writer lock
(BEGIN IMMEDIATE). If the caller's transaction rolls back, so does the bump: a
number is used exactly when the row that carries it is committed.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from provisioner.store.models import Counter


def next_number(session: Session, kind: str, year: int) -> int:
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        insert(Counter).values(kind=kind, year=year, last=0).on_conflict_do_nothing()
    )
    row = session.execute(
        select(Counter).where(Counter.kind == kind, Counter.year == year).with_for_update()
    ).scalar_one()
    row.last += 1
    session.flush()
    return row.last

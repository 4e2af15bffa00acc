"""Rows of the lifecycle clock: renewal proformas per term, and what each stage removed."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from provisioner.store.models import Base, Order, OrderItemRow, Proforma, UtcDateTime


class Renewal(Base):
    """One renewal proforma per service and term: UNIQUE(service_id, term_expiry) is what
    keeps two sweeps (or a sweep re-run after a crash) from billing a term twice."""

    __tablename__ = "renewals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), index=True)
    term_expiry: Mapped[date] = mapped_column(Date)  # the expiry this proforma renews from
    months: Mapped[int] = mapped_column(Integer)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("order_items.id"), unique=True)
    proforma_id: Mapped[int] = mapped_column(ForeignKey("proformas.id"), unique=True)
    fee_added: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    order: Mapped[Order] = relationship()
    item: Mapped[OrderItemRow] = relationship()
    proforma: Mapped[Proforma] = relationship()
    __table_args__ = (UniqueConstraint("service_id", "term_expiry", name="uq_renewals_service_term"),)


class StageRecord(Base):
    """What one lifecycle stage of a service did: when, and what it removed (paths,
    backup ids, sizes, checksums) as reported by the node. Stage 2's manifest carries
    the proof of the purge under ``proof``: the restic snapshot ids forgotten, the bytes
    the prune freed, ``remaining`` (0) and ``restic_check_ok`` (true)."""

    __tablename__ = "stage_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), index=True)
    stage: Mapped[str] = mapped_column(String(24))  # shutdown | delete_data | purge_backups
    term_expiry: Mapped[date] = mapped_column(Date)
    due_on: Mapped[date] = mapped_column(Date)
    done_on: Mapped[date] = mapped_column(Date)
    done_at: Mapped[datetime] = mapped_column(UtcDateTime())
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    __table_args__ = (
        UniqueConstraint("service_id", "stage", "term_expiry", name="uq_stage_records_service_stage"),
    )

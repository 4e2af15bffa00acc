"""SQLAlchemy models. The schema itself is owned by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

Money = Numeric(12, 2)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, also on SQLite (which keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    vat_id: Mapped[str | None] = mapped_column(String(32))
    email: Mapped[str] = mapped_column(String(254))
    address: Mapped[str] = mapped_column(String(200))
    postal_code: Mapped[str] = mapped_column(String(20))
    city: Mapped[str] = mapped_column(String(100))
    country: Mapped[str] = mapped_column(String(2))
    phone: Mapped[str] = mapped_column(String(32))
    lang: Mapped[str] = mapped_column(String(2), default="sl")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Contact(Base):
    """Domain contacts (owner, admin, tech) and the payer / managing user, kept apart."""

    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254))
    address: Mapped[str] = mapped_column(String(200))
    postal_code: Mapped[str] = mapped_column(String(20))
    city: Mapped[str] = mapped_column(String(100))
    country: Mapped[str] = mapped_column(String(2))
    phone: Mapped[str] = mapped_column(String(32))
    __table_args__ = (UniqueConstraint("customer_id", "role", name="uq_contacts_customer_role"),)


class DiscountCodeRow(Base):
    __tablename__ = "discount_codes"
    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    percent: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    amount: Mapped[Decimal | None] = mapped_column(Money)
    kinds: Mapped[str] = mapped_column(String(100), default="hosting,vps,domain,tls")
    valid_on_renewals: Mapped[bool] = mapped_column(Boolean, default=False)
    first_year_promo: Mapped[bool] = mapped_column(Boolean, default=False)
    valid_from: Mapped[date | None] = mapped_column(Date)
    valid_until: Mapped[date | None] = mapped_column(Date)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    brand: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="open")
    discount_code: Mapped[str | None] = mapped_column(String(40))
    renewal: Mapped[bool] = mapped_column(Boolean, default=False)
    refund_flag: Mapped[bool] = mapped_column(Boolean, default=False)
    refund_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    customer: Mapped[Customer] = relationship()
    items: Mapped[list[OrderItemRow]] = relationship(
        back_populates="order", order_by="OrderItemRow.position"
    )


class OrderItemRow(Base):
    __tablename__ = "order_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    product: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(253))
    period_months: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    spec: Mapped[str] = mapped_column(String(400))
    order: Mapped[Order] = relationship(back_populates="items")


class Proforma(Base):
    __tablename__ = "proformas"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    reference: Mapped[str] = mapped_column(String(40), unique=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="open")
    issued_on: Mapped[date] = mapped_column(Date)
    due_date: Mapped[date] = mapped_column(Date)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    net: Mapped[Decimal] = mapped_column(Money)
    vat: Mapped[Decimal] = mapped_column(Money)
    gross: Mapped[Decimal] = mapped_column(Money)
    paid_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    order: Mapped[Order] = relationship()
    lines: Mapped[list[ProformaLine]] = relationship(order_by="ProformaLine.position")


class ProformaLine(Base):
    __tablename__ = "proforma_lines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    proforma_id: Mapped[int] = mapped_column(ForeignKey("proformas.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("order_items.id"))
    description: Mapped[str] = mapped_column(String(400))
    unit_gross: Mapped[Decimal] = mapped_column(Money)
    discount_gross: Mapped[Decimal] = mapped_column(Money)
    net: Mapped[Decimal] = mapped_column(Money)
    vat: Mapped[Decimal] = mapped_column(Money)
    gross: Mapped[Decimal] = mapped_column(Money)
    vat_rate: Mapped[Decimal] = mapped_column(Numeric(5, 4))
    promo: Mapped[bool] = mapped_column(Boolean, default=False)
    item: Mapped[OrderItemRow | None] = relationship()


class Counter(Base):
    """Gapless counters: (kind, year) -> last number used. Bumped inside the same
    transaction that uses the number, so a rollback gives the number back."""

    __tablename__ = "counters"
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(Integer, default=0)


class Invoice(Base):
    """Immutable once issued (a database trigger refuses UPDATE and DELETE)."""

    __tablename__ = "invoices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    year: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    proforma_id: Mapped[int] = mapped_column(ForeignKey("proformas.id"), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime())
    net: Mapped[Decimal] = mapped_column(Money)
    vat: Mapped[Decimal] = mapped_column(Money)
    gross: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    __table_args__ = (UniqueConstraint("year", "seq", name="uq_invoices_year_seq"),)


class Notification(Base):
    """Every inbound payment notification, raw, before anything else happens."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    notice: Mapped[dict[str, Any]] = mapped_column(JSON)  # the parsed, normalized form
    status: Mapped[str] = mapped_column(String(16), default="stored")
    detail: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_notifications_provider_event"),
        Index("ix_notifications_status", "status", "received_at"),
    )


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    txn_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # payment | reversal
    notification_id: Mapped[int | None] = mapped_column(ForeignKey("notifications.id"))
    proforma_id: Mapped[int | None] = mapped_column(ForeignKey("proformas.id"), index=True)
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    reference: Mapped[str | None] = mapped_column(String(60))
    payer: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    __table_args__ = (
        UniqueConstraint("provider", "txn_id", "kind", name="uq_payments_provider_txn_kind"),
    )


class Service(Base):
    __tablename__ = "services"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("order_items.id"), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    product: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(253))
    state: Mapped[str] = mapped_column(String(24))
    period_months: Mapped[int] = mapped_column(Integer)
    expires_on: Mapped[date | None] = mapped_column(Date, index=True)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # The lifecycle clock (pipeline/clock.py): the next day the sweep must look at this
    # service; never later than its next due event. NULL: nothing to do (or on hold).
    clock_on: Mapped[date | None] = mapped_column(Date, index=True)
    # Ops hold: the clock stops for this service (no shutdown, no deletion) until released.
    held: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_reason: Mapped[str | None] = mapped_column(Text)


class Step(Base):
    """The journal: one row per step key. The queue only carries keys."""

    __tablename__ = "steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id"))
    kind: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    deps: Mapped[list[Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    order: Mapped[Order] = relationship()
    __table_args__ = (Index("ix_steps_state_lease", "state", "lease_until"),)


class OutboxMail(Base):
    """One row per e-mail a step sends: observed before sending, so a re-run does
    not send a delivered message again."""

    __tablename__ = "outbox_mails"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    message_id: Mapped[str] = mapped_column(String(200))
    recipient: Mapped[str] = mapped_column(String(254))
    template: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(16))  # pending (held) | sending | sent
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # A held mail's template context, sealed with the outbox key (`Outbox.hold`); None once sent
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    entity: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str | None] = mapped_column(String(60))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

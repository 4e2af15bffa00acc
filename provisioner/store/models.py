"""SQLAlchemy models. The schema itself is owned by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
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
    # brands (issue 17 item 1, migration 0009): the brand whose customer this is; its
    # orders are that brand's (issuer, bank account, sender, numbers)
    brand: Mapped[str] = mapped_column(String(16), default="fcb", server_default="fcb")


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
    # paper invoice (issue 17 item 12, migration 0009): its invoice is posted
    paper_invoice: Mapped[bool] = mapped_column(Boolean, default=False)
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
    # brands (issue 17 item 1, migration 0009): the issuing brand and what the proforma
    # says of it (name, address, VAT id, IBAN), as at issue time
    brand: Mapped[str] = mapped_column(String(16), default="fcb", server_default="fcb")
    issuer: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # issue 17 item 2 (migration 0012): a new order's proforma lapses on this day if still
    # open (due date + the brand's grace + 1; NULL for renewals), indexed for open ones only
    lapses_on: Mapped[date | None] = mapped_column(Date)
    order: Mapped[Order] = relationship()
    lines: Mapped[list[ProformaLine]] = relationship(order_by="ProformaLine.position")
    __table_args__ = (Index("ix_proformas_open_lapses_on", "lapses_on",
                            sqlite_where=sql_text("state = 'open'"),
                            postgresql_where=sql_text("state = 'open'")),)


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
    """Gapless counters: (kind, brand, year) -> last number used. Bumped inside the same
    transaction that uses the number, so a rollback gives the number back."""

    __tablename__ = "counters"
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    brand: Mapped[str] = mapped_column(String(16), primary_key=True)
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
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)  # with the issuer (brands)
    # brands (issue 17 items 1 and 12, migration 0009): each brand numbers its own
    # invoices; ``to_post``: the customer ordered a paper invoice
    brand: Mapped[str] = mapped_column(String(16), default="fcb", server_default="fcb")
    to_post: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (UniqueConstraint("brand", "year", "seq", name="uq_invoices_brand_year_seq"),)


class InvoicePosting(Base):
    """A paper invoice was posted (issue 17 item 12): the invoice itself never changes."""

    __tablename__ = "invoice_postings"
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), primary_key=True)
    posted_at: Mapped[datetime] = mapped_column(UtcDateTime())
    posted_by: Mapped[str] = mapped_column(String(100))


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
    # a site's other services (its backup, its domain) are found by name, not by walking
    # all of a customer's services (a reseller has thousands): the sweep asks per shutdown
    __table_args__ = (Index("ix_services_name_kind", "name", "kind"),)


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
    # A disruptive step may run outside the maintenance window only with this reason
    # (`provisioner apply --force-window`, audited); None: it waits for the window.
    force_window: Mapped[str | None] = mapped_column(Text)
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


# -- backups (issue 16): backup hosts, each node's restic repository, verification state --
class BackupHost(Base):
    """A host that keeps the nodes' restic repositories (a NAS or a server; a throwaway
    host here). ``known_hosts`` holds its SSH host key lines: nodes and the controller
    check the host against them (never trust on first use)."""

    __tablename__ = "backup_hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    address: Mapped[str] = mapped_column(String(253))
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    known_hosts: Mapped[str] = mapped_column(Text)
    root: Mapped[str] = mapped_column(String(200))  # where the repositories live on the host
    throwaway: Mapped[bool] = mapped_column(Boolean, default=False)
    country: Mapped[str | None] = mapped_column(String(2))  # ISO 3166 alpha-2 (data residency)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class BackupRepository(Base):
    """A hosting node's restic repository on a backup host, reached by the node's own
    SFTP user. The repository password is sealed (Fernet, key in ``key_dir``); the
    database alone never reveals it."""

    __tablename__ = "backup_repositories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("hosting_nodes.id"), unique=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("backup_hosts.id"), index=True)
    sftp_user: Mapped[str] = mapped_column(String(32), unique=True)
    path: Mapped[str] = mapped_column(String(255))  # the repository's path on the host
    sealed_password: Mapped[bytes] = mapped_column(LargeBinary)
    # the node's own SFTP key (generated on the node, never leaves it): its public half
    public_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class BackupCheck(Base):
    """The last outcome of one kind of backup job on one repository (nightly, check,
    drill, retention): ops are alerted once when it starts failing, not on every retry."""

    __tablename__ = "backup_checks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("backup_repositories.id"))
    kind: Mapped[str] = mapped_column(String(16))  # nightly | check | drill
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    last_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_ok_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    failing_since: Mapped[datetime | None] = mapped_column(UtcDateTime())
    alerted: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    __table_args__ = (UniqueConstraint("repository_id", "kind", name="uq_backup_checks_repo_kind"),)


# -- GDPR and maintenance window (issue 17, items 10 and 11; migration 0013) --------------
class Breach(Base):
    """A personal-data breach (RULES "Breach: supervisory authority notified within 72
    hours"): opened by ops, reminded until closed with the time the authority was told."""

    __tablename__ = "breaches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    brand: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    opened_by: Mapped[str] = mapped_column(String(100))
    deadline_at: Mapped[datetime] = mapped_column(UtcDateTime())
    notified_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    closed_by: Mapped[str | None] = mapped_column(String(100))
    last_reminded_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reminders: Mapped[int] = mapped_column(Integer, default=0)


# -- migration intake (issue 13, items 1-2; migration 0010) -------------------------------
class Migration(Base):
    """A free migration ordered beside a hosting line (the service of kind ``migration``).
    The old provider's access (``sealed``: Fernet with the key in ``key_dir``, never the
    database's) arrives through the intake form or ``provisioner migration source``;
    ``summary`` holds what may be shown (hosts, ports, user names, flags; no secret).
    ``migration_used_at`` is set by the first copy step (the withdrawal rules read it);
    ``charge_gross`` is what the brand charges on withdrawal (catalog price at order time)."""

    __tablename__ = "migrations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), unique=True)
    hosting_service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id"))
    domain: Mapped[str] = mapped_column(String(253))
    # awaiting_source | source_received | surveyed | over_cap | source_refused | wiped
    state: Mapped[str] = mapped_column(String(24))
    charge_gross: Mapped[Decimal] = mapped_column(Money)
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    source_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    source_by: Mapped[str | None] = mapped_column(String(100))
    wiped_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    wipe_reason: Mapped[str | None] = mapped_column(String(40))
    migration_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    # the survey (issue 13 item 3, migration 0019): its report (no secret), when, and an
    # ops override of an over-the-cap verdict (who, why, when; audited)
    survey: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    surveyed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    override_reason: Mapped[str | None] = mapped_column(String(500))
    override_by: Mapped[str | None] = mapped_column(String(100))
    override_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # the copy, verify and cut-over steps (issue 13 items 5-8, migration 0020): the copy
    # time used across retries and re-drives (the budget); ``copy``: each part's outcome
    # per pass ({"copy": {part: outcome}, "delta": {...}}: a part done is not run again),
    # the copy's state, its held mails, and the wipe's record; the live progress (written
    # at most once a second); the reconciliation report; the cut-over (old values kept)
    copy_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    copy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reconciliation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cutover: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class MigrationLink(Base):
    """The one-time link to a migration's intake form (`provisioner.pipeline.onetime`):
    only the token's hash is stored; used up by the first valid submission."""

    __tablename__ = "migration_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- withdrawals (issue 17, item 3; migration 0012): credit notes and their refunds --------
class CreditNote(Base):
    """A credit note (dobropis) against an invoice: immutable once issued (a database
    trigger refuses UPDATE and DELETE), numbered gaplessly per brand and year. One per
    service: UNIQUE(service_id) is what makes a second withdrawal impossible."""

    __tablename__ = "credit_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    brand: Mapped[str] = mapped_column(String(16))
    year: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"), index=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime())
    net: Mapped[Decimal] = mapped_column(Money)
    vat: Mapped[Decimal] = mapped_column(Money)
    gross: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    __table_args__ = (UniqueConstraint("brand", "year", "seq", name="uq_credit_notes_brand_year_seq"),)


class Refund(Base):
    """The money of a credit note going back by the original payment's method: a card
    refund through the provider's API (idempotency key = the credit note's number), or
    an ops task (bank transfer to the payer's IBAN, PayPal, Braintree, cash)."""

    __tablename__ = "refunds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    credit_note_id: Mapped[int] = mapped_column(ForeignKey("credit_notes.id"), unique=True)
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"))
    provider: Mapped[str] = mapped_column(String(16))  # the original payment's provider
    method: Mapped[str] = mapped_column(String(16))  # card | ops_task
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16))  # pending | refunded | ops_task
    provider_ref: Mapped[str | None] = mapped_column(String(200))  # e.g. Stripe's re_...
    payer_iban: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class BeatSlot(Base):
    """One periodic task's run for one slot (a day, an interval): the claim that keeps a
    second beat from doing the same work again (pipeline/engine/beat.py)."""

    __tablename__ = "beat_slots"
    task: Mapped[str] = mapped_column(String(40), primary_key=True)
    slot: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    lease_until: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    runs: Mapped[int] = mapped_column(Integer, default=1)


# -- backup download links (issue 17 item 9; migration 0016) -------------------------------
class BackupDownloadLink(Base):
    """The one-time link to the download of a hosting service's backup during its
    retention (`pipeline.capabilities.backup_download`): only the token's hash is stored.
    ``started_at`` is the lease of a download under way (one at a time); ``used_at`` is set
    when a download completed."""

    __tablename__ = "backup_download_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), index=True)
    term_expiry: Mapped[date] = mapped_column(Date)
    snapshot_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    bytes_sent: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())

"""Ops use cases shared by the CLI and the HTTP API. Each returns plain JSON-able
data and runs in its own transaction; reads of personal data are audited."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.payments import camt053 as bank
from provisioner.domain import billing
from provisioner.domain.billing import DiscountCode
from provisioner.domain.lifecycle import StepState
from provisioner.domain.policy import get_brand
from provisioner.errors import ConfigurationError, InvalidInput, NotFound
from provisioner.pipeline.capabilities.migration.sources import progress_view
from provisioner.pipeline.engine.plan import Planner, plan
from provisioner.pipeline.usecases import orders
from provisioner.pipeline.usecases.payments import ingest
from provisioner.pipeline.usecases.vps import machine_view
from provisioner.store.audit import audit
from provisioner.store.db import read_only, transaction
from provisioner.store.models import (
    Customer,
    DiscountCodeRow,
    Invoice,
    InvoicePosting,
    Migration,
    Notification,
    Order,
    Payment,
    Proforma,
    Service,
    Step,
)
from provisioner.timeutil import utcnow

Factory = sessionmaker[Session]
MATCHED = "matched"


def jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def customer_dict(c: Customer) -> dict[str, Any]:
    return {
        "id": c.id, "name": c.name, "company": c.company, "vat_id": c.vat_id,
        "email": c.email, "address": c.address, "postal_code": c.postal_code,
        "city": c.city, "country": c.country, "phone": c.phone, "lang": c.lang,
        "brand": c.brand,
    }


def add_customer(factory: Factory, data: Mapping[str, object], actor: str) -> dict[str, Any]:
    with transaction(factory) as s:
        row = orders.add_customer(s, data, actor)
        return jsonable(customer_dict(row))


def show_customer(factory: Factory, customer_id: int, actor: str) -> dict[str, Any]:
    with transaction(factory) as s:
        c = s.get(Customer, customer_id)
        if c is None:
            raise NotFound(f"no customer {customer_id}")
        audit(s, actor, "customer.read", "customer", c.id)
        return jsonable(customer_dict(c))


def proforma_dict(p: Proforma) -> dict[str, Any]:
    return jsonable({
        "number": p.number,
        "order": p.order_id,
        "state": p.state,
        "issued_on": p.issued_on,
        "due_date": p.due_date,
        "reference": p.reference,
        "currency": p.currency,
        "net": p.net,
        "vat": p.vat,
        "gross": p.gross,
        "paid_at": p.paid_at,
        "brand": p.brand,
        "issuer": p.issuer or billing.issuer(get_brand(p.brand)),
        "paper_invoice": p.order.paper_invoice,
        "lines": [
            {"position": li.position, "description": li.description,
             "unit_gross": li.unit_gross, "discount": li.discount_gross,
             "net": li.net, "vat": li.vat, "gross": li.gross,
             "vat_rate": f"{li.vat_rate * 100:.0f} %", "promo": li.promo}
            for li in p.lines
        ],
    })


def create_order(factory: Factory, customer_id: int, items: Sequence[str],
                 discount: str | None, brand: str | None, actor: str, *,
                 paper_invoice: bool = False) -> dict[str, Any]:
    """``brand`` None: the customer's brand (another one is refused)."""
    with transaction(factory) as s:
        order, proforma = orders.create_order(
            s, customer_id=customer_id, item_specs=items, discount=discount,
            brand=brand, actor=actor, paper_invoice=paper_invoice,
        )
        return {"order": order.id, "proforma": proforma_dict(proforma)}


def show_proforma(factory: Factory, number: str) -> dict[str, Any]:
    with transaction(factory) as s:
        p = s.execute(select(Proforma).where(Proforma.number == number.strip())).scalar_one_or_none()
        if p is None:
            raise NotFound(f"no proforma {number!r}")
        return proforma_dict(p)


def service_dict(sv: Service, planned: frozenset[str] | None = None) -> dict[str, Any]:
    """A service for ops; ``planned`` (the installation's planned kinds) adds a note to
    one that stays in provisioning because no capability plans its kind."""
    note = sv.detail
    if sv.state == "provisioning" and planned is not None and sv.kind not in planned and not note:
        note = (f"no provisioning steps for {sv.kind!r} services here "
                "(capability not installed, or turned off in line_kinds)")
    return jsonable({
        "id": sv.id, "order": sv.order_id, "customer": sv.customer_id, "kind": sv.kind,
        "product": sv.product, "name": sv.name, "state": sv.state,
        "period_months": sv.period_months, "expires_on": sv.expires_on, "detail": note,
    })


def step_dict(st: Step) -> dict[str, Any]:
    return jsonable({
        "key": st.key, "kind": st.kind, "order": st.order_id, "state": st.state,
        "attempts": st.attempts, "deps": st.deps, "last_error": st.last_error,
        "result": st.result, "updated_at": st.updated_at,
    })


def show_order(factory: Factory, ref: str, actor: str,
               planned: frozenset[str] | None = None) -> dict[str, Any]:
    with transaction(factory) as s:
        order = orders.find_order(s, ref)
        audit(s, actor, "customer.read", "customer", order.customer_id, {"via": f"order {order.id}"})
        proformas = s.execute(select(Proforma).where(Proforma.order_id == order.id)).scalars()
        services = s.execute(select(Service).where(Service.order_id == order.id)).scalars()
        steps = s.execute(select(Step).where(Step.order_id == order.id).order_by(Step.id)).scalars()
        return jsonable({
            "id": order.id, "status": order.status, "brand": order.brand,
            "discount_code": order.discount_code, "refund_flag": order.refund_flag,
            "refund_reason": order.refund_reason, "created_at": order.created_at,
            "customer": customer_dict(order.customer),
            "items": [i.spec for i in order.items],
            "proformas": [proforma_dict(p) for p in proformas],
            "services": [service_dict(sv, planned) for sv in services],
            "steps": [step_dict(st) for st in steps],
        })


def plan_order(factory: Factory, ref: str, planner: Planner) -> dict[str, Any]:
    """The plan for an order as it stands, plus, for an unpaid one, the plan it will
    get once paid. Nothing is written."""
    with transaction(factory) as s:
        order = orders.find_order(s, ref)
        view = orders.order_view(s, order.id)
        current = plan(view, planner)
        if not view.paid:
            current = plan(replace(view, paid=True), planner)
        journal = {st.key: st.state for st in s.execute(
            select(Step).where(Step.order_id == order.id)).scalars()}
        return {
            "order": order.id,
            "paid": view.paid,
            "steps": [
                {"key": sp.key, "kind": sp.kind, "deps": list(sp.deps),
                 "state": journal.get(sp.key, "not recorded")}
                for sp in current
            ],
        }


def show_service(factory: Factory, service_id: int, actor: str,
                 planned: frozenset[str] | None = None) -> dict[str, Any]:
    with transaction(factory) as s:
        sv = s.get(Service, service_id)
        if sv is None:
            raise NotFound(f"no service {service_id}")
        audit(s, actor, "service.read", "service", sv.id)
        data = service_dict(sv, planned)
        data["steps"] = [step_dict(st) for st in s.execute(
            select(Step).where(Step.service_id == sv.id)).scalars()]
        if sv.kind == "migration":  # its state and the copy's progress (issue 13), no secret
            row = s.execute(select(Migration).where(Migration.service_id == sv.id)).scalar_one_or_none()
            data["migration"] = None if row is None else {"state": row.state, **progress_view(row)}
        if sv.kind == "vps":  # its machine, host and address (issue 14), no secret
            data["vps"] = machine_view(s, sv.id)
        return data


def list_services(factory: Factory, planned: frozenset[str] | None = None) -> list[dict[str, Any]]:
    with transaction(factory) as s:
        return [service_dict(sv, planned)
                for sv in s.execute(select(Service).order_by(Service.id)).scalars()]


def list_jobs(factory: Factory, order_ref: str | None, failed: bool) -> list[dict[str, Any]]:
    with transaction(factory) as s:
        q = select(Step).order_by(Step.id)
        if order_ref:
            q = q.where(Step.order_id == orders.find_order(s, order_ref).id)
        if failed:
            q = q.where(Step.state == StepState.FAILED.value)
        return [step_dict(st) for st in s.execute(q).scalars()]


def order_progress(factory: Factory, order_id: int) -> dict[str, int]:
    with transaction(factory) as s:
        rows = s.execute(
            select(Step.state, func.count()).where(Step.order_id == order_id).group_by(Step.state)
        ).all()
        return {state: int(n) for state, n in rows}


def payment_dict(p: Payment, proforma_number: str | None) -> dict[str, Any]:
    return jsonable({
        "id": p.id, "provider": p.provider, "txn_id": p.txn_id, "kind": p.kind,
        "amount": p.amount, "currency": p.currency, "proforma": proforma_number,
        "reference": p.reference, "status": p.status, "detail": p.detail,
        "received_at": p.received_at,
    })


# Notifications that never became a payment and need a person: processing failed
# (`error`, ops were alerted) or the notice names no transaction to record it under.
NOTIFICATIONS_FOR_OPS = ("error", "no_txn_id")


def notification_dict(n: Notification) -> dict[str, Any]:
    """A notification that never became a payment, in `payment_dict`'s shape (``id``
    None, ``notification`` its id; amount and ids as the notice gave them)."""
    notice = n.notice if isinstance(n.notice, dict) else {}
    return jsonable({
        "id": None, "notification": n.id, "provider": n.provider, "event_id": n.event_id,
        "txn_id": notice.get("txn_id"), "kind": notice.get("kind"), "amount": notice.get("amount"),
        "currency": notice.get("currency"), "proforma": notice.get("proforma"),
        "reference": notice.get("reference"), "status": n.status,
        "detail": f"notification {n.id} ({n.event_id}): {n.detail or ''}", "received_at": n.received_at,
    })


def list_payments(factory: Factory, unmatched: bool, lapsed: bool = False) -> list[dict[str, Any]]:
    """Recorded payments (with ``unmatched``: those that need ops), then the
    notifications that could not be recorded as a payment (`NOTIFICATIONS_FOR_OPS`).
    With ``lapsed`` only the payments for orders that lapsed unpaid (issue 17 item 2)."""
    with transaction(factory) as s:
        q = (
            select(Payment, Proforma.number)
            .outerjoin(Proforma, Proforma.id == Payment.proforma_id)
            .order_by(Payment.id)
        )
        if unmatched:
            q = q.where(Payment.status != MATCHED)
        if lapsed:
            q = q.join(Order, Order.id == Proforma.order_id).where(Order.status == "lapsed")
            return [payment_dict(p, number) for p, number in s.execute(q).all()]
        rows = [payment_dict(p, number) for p, number in s.execute(q).all()]
        notes = s.execute(select(Notification).where(Notification.status.in_(NOTIFICATIONS_FOR_OPS))
                          .order_by(Notification.id)).scalars()
        return rows + [notification_dict(n) for n in notes]


def list_invoices(factory: Factory, to_post: bool = False) -> list[dict[str, Any]]:
    """Every invoice (by brand, year, number); ``to_post``: only paper invoices not yet
    posted (`mark_posted`)."""
    with transaction(factory) as s:
        q = (
            select(Invoice, Proforma.number, InvoicePosting.posted_at)
            .join(Proforma, Proforma.id == Invoice.proforma_id)
            .outerjoin(InvoicePosting, InvoicePosting.invoice_id == Invoice.id)
            .order_by(Invoice.brand, Invoice.year, Invoice.seq)
        )
        if to_post:
            q = q.where(Invoice.to_post.is_(True), InvoicePosting.invoice_id.is_(None))
        return [
            jsonable({"number": inv.number, "brand": inv.brand,
                      "issuer": (inv.snapshot.get("issuer") or {}).get("name"),
                      "proforma": number, "customer": inv.customer_id,
                      "issued_at": inv.issued_at, "net": inv.net, "vat": inv.vat,
                      "gross": inv.gross, "currency": inv.currency,
                      "post": "posted" if posted_at else ("to post" if inv.to_post else ""),
                      "posted_at": posted_at})
            for inv, number, posted_at in s.execute(q).all()
        ]


def mark_posted(factory: Factory, number: str, actor: str) -> dict[str, Any]:
    """Ops posted the paper copy of invoice ``number`` (once; the invoice is unchanged)."""
    with transaction(factory) as s:
        inv = s.execute(select(Invoice).where(Invoice.number == number.strip())).scalar_one_or_none()
        if inv is None:
            raise NotFound(f"no invoice {number!r}")
        if not inv.to_post:
            raise InvalidInput(f"invoice {inv.number} was not ordered on paper")
        if s.get(InvoicePosting, inv.id) is not None:
            raise InvalidInput(f"invoice {inv.number} was posted already")
        s.add(InvoicePosting(invoice_id=inv.id, posted_at=utcnow(), posted_by=actor))
        audit(s, actor, "invoice.posted", "invoice", inv.number)
        return {"number": inv.number, "posted": True}


def import_statement(factory: Factory, data: bytes, actor: str, planner: Planner, *,
                     account_iban: str | Sequence[str]) -> dict[str, Any]:
    """Import a camt.053 statement of one of our accounts (``account_iban``: the brands'
    accounts, `Settings.bank_accounts`): every entry is a notification of its own, and
    pays only a proforma of the brand whose account it is. A statement of another
    account is refused whole (InvalidInput) and nothing of it is stored."""
    accounts = [account_iban] if isinstance(account_iban, str) else list(account_iban)
    if not any(a.strip() for a in accounts):
        raise ConfigurationError("no bank account is set: no statement can be checked against ours")
    notices = bank.parse_camt053(data, account_iban=accounts)
    counts: dict[str, int] = {}
    settled: list[int] = []
    for notice in notices:
        result = ingest(factory, notice, actor, planner)
        counts[result.status] = counts.get(result.status, 0) + 1
        if result.settled and result.order_id is not None:
            settled.append(result.order_id)
    return {"entries": len(notices), "outcomes": counts, "settled": len(settled),
            "_settled_orders": settled}


def add_discount(factory: Factory, code: DiscountCode, actor: str) -> dict[str, Any]:
    with transaction(factory) as s:
        key = code.code.strip().upper()
        if not key or len(key) > 40 or not key.replace("-", "").isalnum():
            raise InvalidInput("a discount code is 1-40 letters, digits or '-'")
        if s.get(DiscountCodeRow, key) is not None:
            raise InvalidInput(f"discount code {key} exists")
        s.add(DiscountCodeRow(
            code=key, percent=code.percent, amount=code.amount, kinds=",".join(sorted(code.kinds)),
            valid_on_renewals=code.valid_on_renewals, first_year_promo=code.first_year_promo,
            valid_from=code.valid_from, valid_until=code.valid_until,
        ))
        audit(s, actor, "discount.created", "discount", key)
        return {"code": key}


def ping(factory: Factory) -> None:
    """The database answers (``/health``): a read-only transaction, so a health check
    never waits for, or takes, the write lock."""
    with read_only(factory) as s:
        s.execute(text("SELECT 1"))

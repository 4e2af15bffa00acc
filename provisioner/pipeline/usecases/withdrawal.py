"""`provisioner withdraw SERVICE`: a customer withdraws from a new order and is refunded
by the brand's policy (issue 17, item 3; the rule is `provisioner.domain.withdrawal`).

One transaction does the database part, all or nothing:

* the refund is worked out from the brand's policy, what was paid for the service's line
  on its invoice, the day since the order (its proforma's issue day), and whether the free migration was used
  (`migration_used`, read from the migration's ``migration_used_at``);
* a credit note (dobropis) is issued against the invoice: immutable (a trigger refuses
  UPDATE and DELETE), numbered gaplessly per brand and year (the ``credit_note`` counter
  of the brand), one per service (UNIQUE(service_id): a second withdrawal is refused);
* a refund row by the original payment's method: a card payment (Stripe) is refunded
  through the provider's API; any other (bank transfer, PayPal, Braintree, cash) becomes
  an ops task, a bank one naming the payer's IBAN from the stored statement entry;
* the service is cancelled (its term ends today; an open renewal proforma is cancelled)
  and the normal staged deletion starts: ``clock.delete_data`` (a last backup, then the
  account is removed from its node) today, the backups purged by the clock on the brand's
  retention;
* the journal gets the refund step (``refund.issue``, idempotency key = the credit
  note's number, so a crash between the refund and its record never refunds twice: the
  re-run gets the provider's first answer) and the customer's credit note e-mail.

The caller dispatches the steps after the commit (the re-drive does it otherwise).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.payments.camt053 import payer_account
from provisioner.domain.lifecycle import ProformaState, ServiceState, transition
from provisioner.domain.money import split_gross
from provisioner.domain.policy import BrandPolicy, get_brand
from provisioner.domain.withdrawal import Withdrawal, compute_withdrawal, credit_note_number
from provisioner.errors import Conflict, NotFound
from provisioner.pipeline.engine.plan import StepSpec
from provisioner.pipeline.engine.runner import record
from provisioner.store.audit import audit
from provisioner.store.counters import next_number
from provisioner.store.db import transaction
from provisioner.store.lifecycle import Renewal
from provisioner.store.models import (
    CreditNote,
    Invoice,
    Migration,
    Notification,
    Order,
    Payment,
    Proforma,
    ProformaLine,
    Refund,
    Service,
)
from provisioner.timeutil import utcnow

ZERO = Decimal("0.00")
CARD_PROVIDERS = frozenset({"stripe"})  # refunded through the provider's API
WITHDRAWABLE = frozenset({ServiceState.ACTIVE.value, ServiceState.SUSPENDED.value})
_PAID = ("matched", "overpaid", "underpaid")


def migration_used(session: Session, service_id: int) -> bool:
    """Whether the free migration ordered with this hosting service was carried out (its
    first copy step sets ``migrations.migration_used_at``)."""
    return session.execute(select(Migration.id).where(
        Migration.hosting_service_id == service_id,
        Migration.migration_used_at.is_not(None))).first() is not None


def migration_charge(session: Session, service_id: int) -> Decimal:
    """The price-list price of this hosting service's migration (recorded at order time)."""
    price = session.execute(select(Migration.charge_gross).where(
        Migration.hosting_service_id == service_id)).scalars().first()
    return Decimal(price) if price is not None else ZERO


def withdraw(factory: sessionmaker[Session], service_id: int, *, today: date, actor: str,
             dry_run: bool = False) -> dict[str, Any]:
    """Withdraw from ``service_id`` on ``today``. ``dry_run``: say what it would come to
    and change nothing. Conflict (a clear refusal) when it is not allowed or was done."""
    try:
        with transaction(factory) as s:
            facts = _facts(s, service_id, today)
            decision: Withdrawal = facts["decision"]
            out = _summary(facts)
            if dry_run:
                s.rollback()
                return out
            if not decision.allowed:
                raise Conflict(f"service {service_id} cannot be withdrawn: {decision.reason}")
            out.update(_issue(s, facts, today, actor))
            return out
    except IntegrityError:  # another withdrawal of the service won at the same moment
        with transaction(factory) as s:
            _refuse_if_done(s, service_id)
        raise


def _facts(s: Session, service_id: int, today: date) -> dict[str, Any]:
    q = select(Service).where(Service.id == service_id)
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    service = s.execute(q).scalar_one_or_none()
    if service is None:
        raise NotFound(f"no service {service_id}")
    _refuse_if_done(s, service_id)
    if service.state not in WITHDRAWABLE:
        raise Conflict(f"service {service_id} is {service.state}: only an active or suspended "
                       "service can be withdrawn from")
    order = s.get(Order, service.order_id)
    assert order is not None
    policy = get_brand(order.brand)
    proforma = s.execute(select(Proforma).where(
        Proforma.order_id == order.id, Proforma.state == ProformaState.PAID.value)
        .order_by(Proforma.id)).scalars().first()
    invoice = None if proforma is None else s.execute(
        select(Invoice).where(Invoice.proforma_id == proforma.id)).scalar_one_or_none()
    if proforma is None or invoice is None:
        raise Conflict(f"service {service_id} has no invoice yet: nothing to credit")
    line = s.execute(select(ProformaLine).where(ProformaLine.proforma_id == proforma.id,
                                                ProformaLine.item_id == service.item_id)
                     ).scalar_one_or_none()
    if line is None:
        raise Conflict(f"the invoice {invoice.number} has no line for service {service_id}")
    payment = s.execute(select(Payment).where(
        Payment.proforma_id == proforma.id, Payment.kind == "payment",
        Payment.status.in_(_PAID)).order_by(Payment.id.desc())).scalars().first()
    used = migration_used(s, service_id)
    decision = compute_withdrawal(
        policy, kind=service.kind, ordered_on=proforma.issued_on, today=today,
        paid=line.gross, migration_used=used, migration_price=migration_charge(s, service_id))
    return {"service": service, "order": order, "policy": policy, "proforma": proforma,
            "invoice": invoice, "line": line, "payment": payment, "migration_used": used,
            "decision": decision, "method": _method(payment)}


def _refuse_if_done(s: Session, service_id: int) -> None:
    done = s.execute(select(CreditNote.number, CreditNote.issued_at, Refund.state)
                     .join(Refund, Refund.credit_note_id == CreditNote.id, isouter=True)
                     .where(CreditNote.service_id == service_id)).first()
    if done is not None:
        number, issued_at, state = done
        raise Conflict(f"service {service_id} was withdrawn on {issued_at.date().isoformat()}: "
                       f"credit note {number}, refund {state or 'none'}; nothing more to do")


def _method(payment: Payment | None) -> str:
    return "card" if payment is not None and payment.provider in CARD_PROVIDERS else "ops_task"


def _summary(f: dict[str, Any]) -> dict[str, Any]:
    service, decision, payment = f["service"], f["decision"], f["payment"]
    return {"service": service.id, "name": service.name, "kind": service.kind,
            "brand": f["policy"].code, "invoice": f["invoice"].number,
            "migration_used": f["migration_used"], **decision.as_dict(),
            "refund_method": f["method"],
            "payment": None if payment is None else {"provider": payment.provider,
                                                     "txn_id": payment.txn_id}}


def _issue(s: Session, f: dict[str, Any], today: date, actor: str) -> dict[str, Any]:
    service: Service = f["service"]
    policy: BrandPolicy = f["policy"]
    decision: Withdrawal = f["decision"]
    invoice: Invoice = f["invoice"]
    payment: Payment | None = f["payment"]
    now = utcnow()
    seq = next_number(s, "credit_note", policy.code, today.year)
    number = credit_note_number(policy.code, today.year, seq)
    net, vat = split_gross(decision.refund)
    lines = [{"description": f"Withdrawal: {f['line'].description}", "gross": str(decision.paid)}]
    if decision.fee:
        lines.append({"description": "Refund fee", "gross": str(-decision.fee)})
    if decision.migration_charge:
        lines.append({"description": "Free migration used: charged per price list",
                      "gross": str(-decision.migration_charge)})
    note = CreditNote(
        number=number, brand=policy.code, year=today.year, seq=seq, invoice_id=invoice.id,
        service_id=service.id, customer_id=invoice.customer_id, issued_at=now, net=net, vat=vat,
        gross=decision.refund, currency=invoice.currency,
        snapshot={"invoice": invoice.number, "issued_on": today.isoformat(),
                  "issuer": {"name": policy.name, "address": policy.address,
                             "vat_id": policy.vat_id},
                  "customer": invoice.snapshot.get("customer"),
                  "service": {"id": service.id, "name": service.name, "kind": service.kind,
                              "expires_on": service.expires_on.isoformat()
                              if service.expires_on else None},
                  "lines": lines, "withdrawal": decision.as_dict()})
    s.add(note)
    s.flush()
    iban = None
    if payment is not None and payment.provider == "bank" and payment.notification_id is not None:
        raw = s.execute(select(Notification.raw).where(
            Notification.id == payment.notification_id)).scalar_one_or_none()
        iban = payer_account(raw, payment.txn_id) if raw else None
    refund = Refund(credit_note_id=note.id, payment_id=payment.id if payment else None,
                    provider=payment.provider if payment else "none", method=f["method"],
                    amount=decision.refund, currency=invoice.currency, idempotency_key=number,
                    state="pending", payer_iban=iban, created_at=now, updated_at=now)
    s.add(refund)
    s.flush()
    # the service ends today: cancelled, its open renewal proforma too, staged deletion
    service.state = transition(service.state, ServiceState.CANCELLED).value
    service.expires_on = today
    service.clock_on = None
    service.updated_at = now
    service.detail = f"withdrawn on {today.isoformat()}: credit note {number}"
    renewals = select(Renewal.proforma_id).where(Renewal.service_id == service.id)
    s.execute(update(Proforma).where(Proforma.id.in_(renewals),
                                     Proforma.state == ProformaState.OPEN.value)
              .values(state=ProformaState.CANCELLED.value)
              .execution_options(synchronize_session=False))
    prefix = f"service:{service.id}"
    record(s, service.order_id, [
        StepSpec(f"{prefix}/refund.issue", "refund.issue", (), {"refund_id": refund.id},
                 service.id),
        StepSpec(f"{prefix}/notify.credit_note", "notify.credit_note", (),
                 {"credit_note_id": note.id}, service.id),
        StepSpec(f"{prefix}/clock.delete_data@{today.isoformat()}", "clock.delete_data", (),
                 {"service_id": service.id, "term_expiry": today.isoformat(),
                  "due_on": today.isoformat(), "from_state": ServiceState.CANCELLED.value},
                 service.id),
    ])
    audit(s, actor, "service.withdrawn", "service", service.id,
          {"credit_note": number, "refund": str(decision.refund), "method": f["method"],
           "invoice": invoice.number})
    return {"credit_note": number, "order": service.order_id, "refund_state": "pending"}


def own_refund(s: Session, provider: str, reverses_txn: str | None,
               amount: Decimal | None) -> str | None:
    """The credit note whose refund a provider's reversal is (the payment it reverses and
    the amount are a refund of ours), else None: so ops are not asked to review it."""
    if not reverses_txn or amount is None:
        return None
    return s.execute(select(CreditNote.number)
                     .join(Refund, Refund.credit_note_id == CreditNote.id)
                     .join(Payment, Payment.id == Refund.payment_id)
                     .where(Payment.provider == provider, Payment.txn_id == reverses_txn,
                            Payment.kind == "payment", Refund.amount == amount)).scalars().first()


def list_refunds(factory: sessionmaker[Session], open_only: bool = False) -> list[dict[str, Any]]:
    """Refunds with their credit notes; ``open_only``: those that still need someone
    (pending, or an ops task not marked done)."""
    with transaction(factory) as s:
        q = (select(Refund, CreditNote.number, CreditNote.service_id)
             .join(CreditNote, CreditNote.id == Refund.credit_note_id).order_by(Refund.id))
        if open_only:
            q = q.where(Refund.state.in_(("pending", "ops_task")))
        return [{"id": r.id, "credit_note": number, "service": sid, "method": r.method,
                 "provider": r.provider, "amount": f"{r.amount:.2f}", "currency": r.currency,
                 "state": r.state, "provider_ref": r.provider_ref, "payer_iban": r.payer_iban,
                 "detail": r.detail} for r, number, sid in s.execute(q).all()]

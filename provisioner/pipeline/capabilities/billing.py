"""Billing steps: invoice issuance, the proforma/payment/invoice e-mails, service
activation.

Brands: an invoice is its proforma's brand's: numbered in the brand's own gapless
sequence of the year, with the issuer the proforma was issued by (stored on the
proforma at issue time, copied into the invoice's snapshot), and marked ``to_post``
when the order asked for a paper invoice. The proforma mail's payee and IBAN are the
issuer's, never an installation-wide account.

Each handler observes before it acts, so running it twice changes nothing the
second time. The handlers are listed in `HANDLERS` at the end; the composition root
(`provisioner.bootstrap`) gathers every capability's list into the runner's registry.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provisioner.domain import billing
from provisioner.domain.lifecycle import ProformaState, ServiceState, add_period, earliest_event
from provisioner.domain.policy import get_brand
from provisioner.errors import Conflict, StepFailed
from provisioner.pipeline.engine.plan import LinePlanner
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult
from provisioner.pipeline.outbox import step_outbox
from provisioner.store.audit import audit
from provisioner.store.counters import next_number
from provisioner.store.db import transaction
from provisioner.store.models import (
    Customer,
    Invoice,
    Payment,
    Proforma,
    Service,
    Step,
)

log = logging.getLogger("provisioner.steps")
SYSTEM = "system:pipeline"


def _proforma(s: Session, proforma_id: int) -> Proforma:
    p = s.get(Proforma, proforma_id)
    if p is None:
        raise StepFailed("?", f"proforma {proforma_id} does not exist")
    return p


def _lines(p: Proforma) -> list[dict[str, Any]]:
    return [
        {
            "description": line.description,
            "net": line.net,
            "vat": line.vat,
            "gross": line.gross,
            "vat_rate": line.vat_rate,
            "discount": line.discount_gross,
        }
        for line in p.lines
    ]


def proforma_issuer(p: Proforma) -> dict[str, str]:
    """Who issued proforma ``p``: as stored at issue time (the brand's details then)."""
    return dict(p.issuer) if p.issuer else billing.issuer(get_brand(p.brand))


def issue_invoice(s: Session, proforma_id: int) -> tuple[Invoice, bool]:
    """Issue the invoice of a paid proforma, once. Returns (invoice, created)."""
    existing = s.execute(
        select(Invoice).where(Invoice.proforma_id == proforma_id)
    ).scalar_one_or_none()
    if existing is not None:
        return existing, False
    p = _proforma(s, proforma_id)
    if p.state != ProformaState.PAID.value or p.paid_at is None:
        raise Conflict(f"proforma {p.number} is not paid; no invoice")
    customer = s.get(Customer, p.order.customer_id)
    assert customer is not None
    year = p.paid_at.year
    brand = get_brand(p.brand)
    seq = next_number(s, "invoice", brand.code, year)
    invoice = Invoice(
        number=billing.invoice_number(year, seq, brand),
        brand=brand.code,
        to_post=bool(p.order.paper_invoice),
        year=year,
        seq=seq,
        proforma_id=p.id,
        customer_id=customer.id,
        issued_at=p.paid_at,
        net=p.net,
        vat=p.vat,
        gross=p.gross,
        currency=p.currency,
        snapshot={
            "issuer": proforma_issuer(p),
            "paper_invoice": bool(p.order.paper_invoice),
            "proforma": p.number,
            "reference": p.reference,
            "customer": {
                "name": customer.name,
                "company": customer.company,
                "vat_id": customer.vat_id,
                "address": customer.address,
                "postal_code": customer.postal_code,
                "city": customer.city,
                "country": customer.country,
            },
            "lines": [
                {k: str(v) for k, v in line.items()} for line in _lines(p)
            ],
        },
    )
    s.add(invoice)
    s.flush()
    audit(s, SYSTEM, "invoice.issued", "invoice", invoice.number,
          {"proforma": p.number, "brand": brand.code, "to_post": invoice.to_post})
    return invoice, True


def step_invoice_issue(ctx: StepContext, step: Step) -> StepResult:
    try:
        with transaction(ctx.factory) as s:
            invoice, created = issue_invoice(s, int(step.params["proforma_id"]))
            number = invoice.number
    except IntegrityError:
        # Another run issued it at the same moment; its transaction won, ours (and the
        # counter bump in it) rolled back, so numbering has no gap.
        with transaction(ctx.factory) as s:
            invoice, created = issue_invoice(s, int(step.params["proforma_id"]))
            number = invoice.number
    return StepResult(created, {"invoice": number})


# -- e-mails ------------------------------------------------------------------
def _customer_ctx(c: Customer) -> dict[str, Any]:
    return {"name": c.name, "company": c.company, "email": c.email, "lang": c.lang}


def _proforma_ctx(p: Proforma) -> dict[str, Any]:
    issuer = proforma_issuer(p)
    return {
        "number": p.number,
        "issued_on": p.issued_on,
        "due_date": p.due_date,
        "lines": _lines(p),
        "net": p.net,
        "vat": p.vat,
        "gross": p.gross,
        "reference": p.reference,
        "iban": issuer["iban"],  # the issuing brand's own account (UPN form)
        "recipient": issuer["recipient"],
        "issuer": issuer,
        "paper_invoice": bool(p.order.paper_invoice),
    }


def _mail_context(ctx: StepContext, s: Session, template: str, p: Proforma) -> dict[str, Any]:
    customer = s.get(Customer, p.order.customer_id)
    assert customer is not None
    data: dict[str, Any] = {
        "customer": _customer_ctx(customer),
        "proforma": _proforma_ctx(p),
        "issuer": proforma_issuer(p),
        "company": proforma_issuer(p)["display_name"],
    }
    if template == "payment_confirmation":
        payment = s.execute(
            select(Payment)
            .where(Payment.proforma_id == p.id, Payment.kind == "payment")
            .order_by(Payment.id.desc())
        ).scalars().first()
        paid = s.execute(
            select(func.coalesce(func.sum(Payment.amount), 0)).where(
                Payment.proforma_id == p.id, Payment.kind == "payment"
            )
        ).scalar_one()
        data["payment"] = {
            "amount": paid,
            "method": payment.provider if payment else "",
            "received_on": (p.paid_at or ctx.now()).date(),
        }
    if template == "invoice":
        invoice = s.execute(
            select(Invoice).where(Invoice.proforma_id == p.id)
        ).scalar_one_or_none()
        if invoice is None:
            raise StepFailed(ctx.step_key, "no invoice to send yet")
        data["invoice"] = {
            "number": invoice.number,
            "issued_on": invoice.issued_at.date(),
            "proforma_number": p.number,
            "lines": _lines(p),
            "net": invoice.net,
            "vat": invoice.vat,
            "gross": invoice.gross,
            "issuer": invoice.snapshot.get("issuer") or proforma_issuer(p),
            "to_post": invoice.to_post,
        }
        data["issuer"] = data["invoice"]["issuer"]
    return data


def send_once(ctx: StepContext, template: str, proforma_id: int,
              extra: dict[str, Any] | None = None) -> StepResult:
    """A proforma's e-mail (the proforma, its payment, its invoice, a renewal notice),
    once per step key (`pipeline.outbox`)."""
    box = step_outbox(ctx)
    sent = box.sent(ctx.step_key)
    if sent is not None:
        return StepResult(False, {"message_id": sent})
    with transaction(ctx.factory) as s:
        p = _proforma(s, proforma_id)
        customer = s.get(Customer, p.order.customer_id)
        assert customer is not None
        recipient, lang = customer.email, customer.lang
        context = {**_mail_context(ctx, s, template, p), **(extra or {})}
    result = box.send_once(ctx.step_key, recipient, template, lang, context)
    return StepResult(result.sent_now, {"message_id": result.message_id})


def step_notify_proforma(ctx: StepContext, step: Step) -> StepResult:
    return send_once(ctx, "proforma", int(step.params["proforma_id"]))


def step_notify_payment(ctx: StepContext, step: Step) -> StepResult:
    return send_once(ctx, "payment_confirmation", int(step.params["proforma_id"]))


def step_notify_invoice(ctx: StepContext, step: Step) -> StepResult:
    return send_once(ctx, "invoice", int(step.params["proforma_id"]))


def step_service_activate(ctx: StepContext, step: Step) -> StepResult:
    """All of a service's steps are done: it is active for one period from today."""
    with transaction(ctx.factory) as s:
        service = s.get(Service, int(step.params["service_id"]))
        if service is None:
            raise StepFailed(step.key, "service does not exist")
        if service.state == ServiceState.ACTIVE.value:
            return StepResult(False, {"expires_on": str(service.expires_on)})
        today = ctx.now().date()
        service.state = ServiceState.ACTIVE.value
        # A capability step may have set the expiry from the outside system's answer
        # (a domain's expiry is the registry's); keep it.
        if service.expires_on is None:
            service.expires_on = add_period(today, service.period_months)
        service.clock_on = earliest_event(service.expires_on)  # the sweep takes it from here
        service.updated_at = ctx.now()
        audit(s, SYSTEM, "service.activated", "service", service.id)
        return StepResult(True, {"expires_on": str(service.expires_on)})


HANDLERS: dict[str, Handler] = {
    "invoice.issue": step_invoice_issue,
    "notify.proforma": step_notify_proforma,
    "notify.payment": step_notify_payment,
    "notify.invoice": step_notify_invoice,
    "service.activate": step_service_activate,
}

PLANNERS: dict[str, LinePlanner] = {}  # no line kind of its own

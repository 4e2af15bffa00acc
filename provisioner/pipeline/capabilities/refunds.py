"""The money of a withdrawal going back (issue 17, item 3): the ``refund.issue`` step and
the customer's credit note e-mail (``notify.credit_note``).

``refund.issue`` observes before it acts: a refund already ``refunded`` changes nothing.
A card payment is refunded through the provider's API (``Adapters.refunds``) with the
credit note's number as the idempotency key, then recorded: if the worker dies between
the two (or the answer is lost), the re-run asks again with the same key and gets the
provider's first answer, so the card is refunded once. Any other method is an ops task:
ops get one e-mail naming the amount, the credit note and, for a bank transfer, the
payer's IBAN; `provisioner refunds list --open` lists what is left to do.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from provisioner.errors import StepFailed
from provisioner.pipeline.engine.plan import LinePlanner
from provisioner.pipeline.engine.ports import need
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult
from provisioner.pipeline.outbox import step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import CreditNote, Customer, Invoice, Payment, Refund, Step

log = logging.getLogger("provisioner.refunds")
SYSTEM = "system:refunds"


def step_refund(ctx: StepContext, step: Step) -> StepResult:
    refund_id = int(step.params["refund_id"])
    with transaction(ctx.factory) as s:
        r = s.get(Refund, refund_id)
        if r is None:
            raise StepFailed(step.key, f"refund {refund_id} does not exist")
        note = s.get(CreditNote, r.credit_note_id)
        assert note is not None
        payment = s.get(Payment, r.payment_id) if r.payment_id is not None else None
        if r.state in ("refunded", "done"):
            return StepResult(False, {"refund": r.provider_ref, "state": r.state})
        method, amount, currency, key = r.method, r.amount, r.currency, r.idempotency_key
        number, service_id, iban = note.number, note.service_id, r.payer_iban
        provider = r.provider
        txn = payment.txn_id if payment is not None else None
    if method == "card":
        if txn is None:
            raise StepFailed(step.key, f"credit note {number}: no card payment to refund")
        refunds = need(ctx.adapters.refunds, "card refunds (stripe_secret_key)")
        ctx.heartbeat()
        receipt = refunds.refund(payment_intent=txn, amount=amount, currency=currency,
                                 idempotency_key=key,
                                 metadata={"credit_note": number, "service": str(service_id)})
        with transaction(ctx.factory) as s:
            ctx.fence(s)
            row = s.get(Refund, refund_id)
            assert row is not None
            row.state, row.provider_ref, row.updated_at = "refunded", receipt.id, ctx.now()
            row.detail = f"{provider} refund {receipt.id}: {receipt.status}"
            audit(s, SYSTEM, "refund.made", "refund", refund_id,
                  {"credit_note": number, "provider_ref": receipt.id, "amount": str(amount)})
        return StepResult(True, {"refund": receipt.id, "status": receipt.status})
    # an ops task: the money goes back by hand, ops told once (the outbox keys on the step)
    how = (f"bank transfer to the payer's IBAN {iban}" if iban else
           "bank transfer; the payer's IBAN is not in the statement: ask the customer"
           if provider in ("bank", "manual-bank") else f"refund through {provider}")
    detail = (f"Refund {amount:.2f} {currency} for credit note {number} (service {service_id}): "
              f"{how}; original payment {provider} {txn or '-'}")
    sent = step_outbox(ctx).send_once(ctx.step_key, ctx.settings.ops_email, "ops_refund", "en", {
        "credit_note": number, "service_id": service_id, "amount": f"{amount:.2f}",
        "currency": currency, "how": how, "provider": provider, "txn_id": txn or "-",
        "payer_iban": iban or ""})
    with transaction(ctx.factory) as s:
        row = s.get(Refund, refund_id)
        assert row is not None
        if row.state == "pending":
            row.state, row.detail, row.updated_at = "ops_task", detail, ctx.now()
            audit(s, SYSTEM, "refund.ops_task", "refund", refund_id, {"credit_note": number})
    return StepResult(sent.sent_now, {"ops_task": detail, "message_id": sent.message_id})


def step_notify_credit_note(ctx: StepContext, step: Step) -> StepResult:
    """The credit note e-mailed to the customer, in their language, once."""
    box = step_outbox(ctx)
    if (sent := box.sent(ctx.step_key)) is not None:
        return StepResult(False, {"message_id": sent})
    with transaction(ctx.factory) as s:
        note = s.get(CreditNote, int(step.params["credit_note_id"]))
        if note is None:
            raise StepFailed(step.key, "credit note does not exist")
        customer = s.get(Customer, note.customer_id)
        invoice = s.get(Invoice, note.invoice_id)
        refund = s.execute(select(Refund).where(Refund.credit_note_id == note.id)).scalar_one()
        assert customer is not None and invoice is not None
        context: dict[str, Any] = {
            "customer": {"name": customer.name, "company": customer.company,
                         "email": customer.email, "lang": customer.lang},
            "credit_note": {"number": note.number, "issued_on": note.issued_at.date(),
                            "invoice": invoice.number, "net": note.net, "vat": note.vat,
                            "gross": note.gross, "service": note.snapshot["service"]["name"],
                            "lines": note.snapshot["lines"]},
            "card": refund.method == "card",
        }
        recipient, lang = customer.email, customer.lang
    result = box.send_once(ctx.step_key, recipient, "credit_note", lang, context)
    return StepResult(result.sent_now, {"message_id": result.message_id})


HANDLERS: dict[str, Handler] = {
    "refund.issue": step_refund,
    "notify.credit_note": step_notify_credit_note,
}

PLANNERS: dict[str, LinePlanner] = {}  # no line kind of its own: `provisioner withdraw` writes its steps

"""Unpaid new orders lapse (issue 17, item 2; the rule is `provisioner.domain.lapse`).

The sweep (`lapse_due`) reads the open proformas whose ``lapses_on`` has come, through
the partial index ``ix_proformas_open_lapses_on`` (open proformas only): a lapsed or
paid proforma leaves the index, so the cost follows what is due, not the number of
proformas. Only new orders' proformas carry ``lapses_on``; a renewal proforma goes the
expiry path. For each, in the sweep's transaction:

* the proforma OPEN -> CANCELLED with one conditional UPDATE (a payment settling it at
  the same moment wins: the lapse then changes nothing);
* the order ``lapsed``, its services (never provisioned) ``cancelled``;
* a ``notify.lapsed`` step that tells the customer, in their language, once (the outbox).

A payment that arrives later for a lapsed proforma is recorded (``proforma_cancelled``,
listed by ``payments list --unmatched`` and ``--lapsed``), never settles anything, and
ops are told once (`note_late_payment` writes an ``ops.lapsed_payment`` step in the
payment's own transaction; its key is the payment's).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date
from typing import Any, NamedTuple

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from provisioner.domain.lifecycle import ProformaState, ServiceState
from provisioner.pipeline.capabilities.billing import send_once
from provisioner.pipeline.engine.plan import StepSpec
from provisioner.pipeline.engine.runner import Handler, StepContext, StepResult, record
from provisioner.pipeline.outbox import step_outbox
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Customer, Order, Payment, Proforma, Service, Step
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.lifecycle")
SYSTEM = "system:clock"
LAPSED = "lapsed"  # the order's status once its proforma lapsed
# literal, so that SQLite and PostgreSQL see the partial index's own condition
_OPEN = text("proformas.state = 'open'")


class Lapse(NamedTuple):
    """One service of a lapsed order, as the sweep reports it (`sweeper.Action`'s fields)."""

    service_id: int
    event: str
    due_on: date
    detail: str


def lapse_due(factory: sessionmaker[Session], today: date, *, dry_run: bool = False,
              batch: int = 500) -> list[Lapse]:
    """Cancel every new order whose proforma is still open on its ``lapses_on``. Each
    lapsed proforma leaves the index (it is no longer open), so the next batch reads on
    from where this one ended; a dry run reads them all once and writes nothing."""
    actions: list[Lapse] = []
    while True:
        with transaction(factory) as s:
            q = select(Proforma.id, Proforma.number, Proforma.order_id, Proforma.lapses_on,
                       Proforma.due_date).where(_OPEN, Proforma.lapses_on <= today)
            rows = s.execute(q if dry_run else q.limit(batch)).all()
            with s.no_autoflush:  # set-based writes: a few statements per batch
                actions += _lapse_batch(s, rows, today, dry_run)
            if dry_run:
                s.rollback()
                return actions
        if len(rows) < batch:
            return actions


def _lapse_batch(s: Session, rows: Sequence[Any], today: date, dry_run: bool) -> list[Lapse]:
    if not rows:
        return []
    if not dry_run:  # OPEN -> CANCELLED; one paid at this very moment stays paid
        cancelled = set(s.execute(
            update(Proforma).where(Proforma.id.in_([r.id for r in rows]),
                                   Proforma.state == ProformaState.OPEN.value)
            .values(state=ProformaState.CANCELLED.value).returning(Proforma.id)
            .execution_options(synchronize_session=False)).scalars())
        rows = [r for r in rows if r.id in cancelled]
        if not rows:
            return []
    order_ids = [r.order_id for r in rows]
    services: dict[int, list[int]] = {}
    for sid, oid in s.execute(select(Service.id, Service.order_id).where(
            Service.order_id.in_(order_ids),
            Service.state == ServiceState.PENDING_PAYMENT.value)).all():
        services.setdefault(oid, []).append(sid)
    actions: list[Lapse] = []
    for r in rows:
        detail = f"proforma {r.number} unpaid since {r.due_date.isoformat()}: order cancelled"
        on = r.lapses_on or today
        actions += [Lapse(sid, "lapse", on, detail) for sid in services.get(r.order_id, [])] or [
            Lapse(0, "lapse", on, detail)]
    if dry_run:
        return actions
    now = utcnow()
    s.execute(update(Order).where(Order.id.in_(order_ids)).values(status=LAPSED)
              .execution_options(synchronize_session=False))
    s.execute(update(Service)
              .where(Service.order_id.in_(order_ids),
                     Service.state == ServiceState.PENDING_PAYMENT.value)
              .values(state=ServiceState.CANCELLED.value, clock_on=None, updated_at=now,
                      detail="order lapsed: its proforma was not paid")
              .execution_options(synchronize_session=False))
    for r in rows:
        on = r.lapses_on or today
        record(s, r.order_id, [StepSpec(f"proforma:{r.number}/notify.lapsed", "notify.lapsed", (),
                                        {"proforma_id": r.id, "lapsed_on": on.isoformat()})])
        audit(s, SYSTEM, "proforma.lapsed", "proforma", r.number,
              {"due_date": r.due_date.isoformat(), "order": r.order_id,
               "services": services.get(r.order_id, [])})
    return actions


def note_late_payment(s: Session, payment_id: int, proforma: Proforma) -> bool:
    """In the transaction that records a payment for a cancelled proforma: if its order
    lapsed, an ``ops.lapsed_payment`` step (one per payment) tells ops. True if written."""
    status = s.execute(select(Order.status).where(Order.id == proforma.order_id)).scalar_one()
    if status != LAPSED:
        return False
    added = record(s, proforma.order_id, [StepSpec(
        f"payment:{payment_id}/ops.lapsed_payment", "ops.lapsed_payment", (),
        {"payment_id": payment_id, "proforma_id": proforma.id})])
    return added == 1


# -- steps ----------------------------------------------------------------------------------
def step_notify_lapsed(ctx: StepContext, step: Step) -> StepResult:
    """The customer is told that the order lapsed (their language, once)."""
    pid = int(step.params["proforma_id"])
    with transaction(ctx.factory) as s:
        p = s.get(Proforma, pid)
        if p is None:
            return StepResult(False, {"skipped": "no such proforma"})
        names = list(s.execute(select(Service.name).where(Service.order_id == p.order_id)
                               .order_by(Service.id)).scalars())
    return send_once(ctx, "order_lapsed", pid, {
        "services": names, "lapsed_on": date.fromisoformat(str(step.params["lapsed_on"]))})


def step_ops_lapsed_payment(ctx: StepContext, step: Step) -> StepResult:
    """Ops are told, once, that money came in for an order that lapsed: it is recorded,
    nothing is provisioned; refund it or reopen the order by hand."""
    with transaction(ctx.factory) as s:
        payment = s.get(Payment, int(step.params["payment_id"]))
        p = s.get(Proforma, int(step.params["proforma_id"]))
        if payment is None or p is None:
            return StepResult(False, {"skipped": "payment or proforma missing"})
        customer = s.get(Customer, p.order.customer_id)
        context: dict[str, Any] = {
            "payment": {"id": payment.id, "provider": payment.provider, "txn_id": payment.txn_id,
                        "amount": f"{payment.amount:.2f}", "currency": payment.currency},
            "proforma": {"number": p.number, "due_date": p.due_date.isoformat()},
            "order_id": p.order_id, "customer_id": customer.id if customer else None,
        }
    sent = step_outbox(ctx).send_once(ctx.step_key, ctx.settings.ops_email, "ops_lapsed_payment",
                                      "en", context)
    return StepResult(sent.sent_now, {"message_id": sent.message_id})


HANDLERS: dict[str, Handler] = {
    "notify.lapsed": step_notify_lapsed,
    "ops.lapsed_payment": step_ops_lapsed_payment,
}

"""Audited list reads (RULES "Data protection": every access to personal data is logged).

A list of services, payments, invoices, proformas or jobs shows customers' data as much
as a single read does, so it is audited like one: a ``customer.read`` row per customer
the list showed, naming the list and its filter (`store.audit.audit_reads`). The CLI
and the ops API list through these functions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.pipeline.usecases import ops
from provisioner.store.audit import audit_reads
from provisioner.store.db import transaction
from provisioner.store.models import Order, Proforma

Factory = sessionmaker[Session]
Rows = list[dict[str, Any]]
_BATCH = 500


def _via(name: str, filters: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in sorted(filters.items()) if v not in (None, False, ""))
    return f"{name} list" + (f" ({shown})" if shown else "")


def _batches(values: list[Any]) -> Iterable[list[Any]]:
    for i in range(0, len(values), _BATCH):
        yield values[i:i + _BATCH]


def _customers(s: Session, rows: Rows) -> set[int]:
    """The customers whose data ``rows`` show: named directly, or through their order or
    proforma."""
    ids = {int(r["customer"]) for r in rows if r.get("customer") is not None}
    orders = sorted({int(r["order"]) for r in rows if r.get("order") is not None and "customer" not in r})
    numbers = sorted({str(r["proforma"]) for r in rows if r.get("proforma") and "customer" not in r})
    for chunk in _batches(orders):
        ids.update(s.execute(select(Order.customer_id).where(Order.id.in_(chunk))).scalars())
    for chunk in _batches(numbers):
        ids.update(s.execute(select(Order.customer_id).join(Proforma, Proforma.order_id == Order.id)
                             .where(Proforma.number.in_(chunk))).scalars())
    return ids


def audited(factory: Factory, actor: str, name: str, rows: Rows, **filters: Any) -> Rows:
    """Audit that ``actor`` read the list ``name`` (``rows``), then hand the rows back."""
    with transaction(factory) as s:
        audit_reads(s, actor, _via(name, filters), _customers(s, rows))
    return rows


def services(factory: Factory, actor: str, planned: frozenset[str] | None = None) -> Rows:
    return audited(factory, actor, "services", ops.list_services(factory, planned=planned))


def jobs(factory: Factory, actor: str, order_ref: str | None, failed: bool) -> Rows:
    return audited(factory, actor, "jobs", ops.list_jobs(factory, order_ref, failed),
                   order=order_ref, failed=failed)


def payments(factory: Factory, actor: str, unmatched: bool, **filters: Any) -> Rows:
    return audited(factory, actor, "payments", ops.list_payments(factory, unmatched, **filters),
                   unmatched=unmatched, **filters)


def invoices(factory: Factory, actor: str, **filters: Any) -> Rows:
    return audited(factory, actor, "invoices", ops.list_invoices(factory, **filters), **filters)


def proformas(factory: Factory, actor: str, state: str | None = None, limit: int = 1000) -> Rows:
    """Proformas, newest first (``state``: only those in it), at most ``limit``."""
    with transaction(factory) as s:
        q = select(Proforma, Order.customer_id).join(Order, Order.id == Proforma.order_id) \
            .order_by(Proforma.id.desc()).limit(max(1, min(limit, 10_000)))
        if state:
            q = q.where(Proforma.state == state)
        rows = [{**ops.proforma_dict(p), "customer": customer} for p, customer in s.execute(q).all()]
    return audited(factory, actor, "proformas", rows, state=state)

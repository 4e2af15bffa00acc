"""Renewal proformas: one per term (UNIQUE(service, term)), and the reactivation fee."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisioner.domain import billing, catalog
from provisioner.domain.lifecycle import (
    ProformaState,
    renew_by,
)
from provisioner.domain.money import split_gross
from provisioner.domain.policy import BrandPolicy
from provisioner.pipeline.capabilities.lifecycle.batch import Batch, step_row
from provisioner.pipeline.engine.plan import OrderView, plan
from provisioner.store.audit import audit
from provisioner.store.counters import next_number
from provisioner.store.lifecycle import Renewal
from provisioner.store.models import (
    Order,
    OrderItemRow,
    Proforma,
    ProformaLine,
    Service,
)
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.lifecycle")
SYSTEM = "system:clock"


def find_renewal(s: Session, service_id: int, term: date) -> Renewal | None:
    return s.execute(select(Renewal).where(Renewal.service_id == service_id,
                                           Renewal.term_expiry == term)).scalar_one_or_none()


# -- renewal proformas ----------------------------------------------------------------------
def ensure_renewal(s: Session, service: Service, policy: BrandPolicy, today: date,
                   b: Batch | None = None) -> Renewal:
    """The renewal order and proforma of the service's current term, created once."""
    assert service.expires_on is not None
    term = service.expires_on
    existing = b.renewal(service.id, term) if b is not None else find_renewal(s, service.id, term)
    if existing is not None:
        return existing
    original = b.items.get(service.item_id) if b is not None else None
    original = original or s.get(OrderItemRow, service.item_id)
    assert original is not None
    item = replace(catalog.parse_item(original.spec), action="renew")
    # RULES: discount codes never apply to renewals unless the code says so; a renewal
    # proforma is issued by us and carries none.
    quote = billing.price_order([item], catalog=catalog.DEFAULT_CATALOG, policy=policy, today=today,
                                renewal=True)
    now = utcnow()
    seq = (b.next_proforma_number(today.year, policy.code) if b is not None
           else next_number(s, "proforma", policy.code, today.year))
    order = Order(customer_id=service.customer_id, brand=policy.code, status="open",
                  discount_code=None, renewal=True, created_at=now)
    row = OrderItemRow(position=1, kind=item.kind, product=item.product, name=item.name,
                       period_months=item.period_months, action="renew", spec=item.to_spec())
    order.items.append(row)
    due = max(renew_by(term, service.kind, service.name, policy), today)
    proforma = Proforma(number=billing.proforma_number(today.year, seq, policy),
                        reference=billing.payment_reference(today.year, seq, policy),
                        brand=policy.code, issuer=billing.issuer(policy), order=order,
                        state=ProformaState.OPEN.value, issued_on=today,
                        due_date=due, currency="EUR", net=quote.net, vat=quote.vat,
                        gross=quote.gross)
    for line in quote.lines:
        proforma.lines.append(ProformaLine(
            position=line.position, item=row, description=line.description,
            unit_gross=line.unit_gross, discount_gross=line.discount_gross, net=line.net,
            vat=line.vat, gross=line.gross, vat_rate=line.vat_rate, promo=line.promo))
    renewal = Renewal(service_id=service.id, term_expiry=term, months=item.period_months,
                      order=order, item=row, proforma=proforma, fee_added=False, created_at=now)
    s.add_all([order, row, proforma, renewal])
    audit(s, SYSTEM, "renewal.issued", "service", service.id,
          {"proforma": proforma.number, "term_expiry": term.isoformat(), "gross": str(quote.gross)})
    if b is not None:  # the batch flushes once, then writes the proformas' plans
        b.renewals[(service.id, term)] = renewal
        b.new_proformas.append(proforma)
    else:
        s.flush()
        record_proforma_plan(s, proforma)
    return renewal


def record_proforma_plan(s: Session, proforma: Proforma) -> None:
    """A renewal proforma's plan is its e-mail (notify.proforma); payment plans the rest."""
    for spec in plan(OrderView(proforma.order_id, proforma.id, proforma.number, False)):
        s.add(step_row(proforma.order_id, spec))


def add_reactivation_fee(s: Session, proforma: Proforma, policy: BrandPolicy) -> bool:
    """Add the brand's reactivation fee to an OPEN proforma; False if it is no longer open."""
    return add_fee_line(s, proforma, policy.reactivation_fee,
                        "Reactivation fee / Pristojbina za ponovni vklop", policy)


def add_fee_line(s: Session, proforma: Proforma, fee: Decimal, description: str,
                 policy: BrandPolicy) -> bool:
    """Add a fee line (gross ``fee``) to an OPEN proforma; False if it is no longer open.
    The reactivation fee; a domain's restore fee (``domain.tld_profiles``)."""
    net, vat = split_gross(fee, policy.vat_rate)
    if proforma.id is None:  # made in this very batch: nobody else can see (or pay) it yet
        proforma.net += net
        proforma.vat += vat
        proforma.gross += fee
        proforma.lines.append(ProformaLine(
            position=len(proforma.lines) + 1, item_id=None,
            description=description, unit_gross=fee,
            discount_gross=Decimal("0.00"), net=net, vat=vat, gross=fee,
            vat_rate=policy.vat_rate, promo=False))
        audit(s, SYSTEM, "proforma.fee_added", "proforma", proforma.number,
              {"fee": str(fee), "gross": str(proforma.gross), "line": description})
        return True
    res = s.execute(update(Proforma)
                    .where(Proforma.id == proforma.id, Proforma.state == ProformaState.OPEN.value)
                    .values(net=Proforma.net + net, vat=Proforma.vat + vat,
                            gross=Proforma.gross + fee)
                    .execution_options(synchronize_session=False))
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    position = max((line.position for line in proforma.lines), default=0) + 1
    proforma.lines.append(ProformaLine(position=position, item_id=None,
                       description=description,
                       unit_gross=fee, discount_gross=Decimal("0.00"), net=net, vat=vat, gross=fee,
                       vat_rate=policy.vat_rate, promo=False))
    gross = proforma.gross + fee
    s.expire(proforma, ["net", "vat", "gross"])  # the UPDATE above wrote them
    audit(s, SYSTEM, "proforma.fee_added", "proforma", proforma.number,
          {"fee": str(fee), "gross": str(gross), "line": description})
    return True

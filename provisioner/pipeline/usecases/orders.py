"""Customers, orders and proformas: the ops use cases that create them.

Pricing and every rule live in `provisioner.domain`; this module loads what the
rules need, calls them, and stores the result in one transaction.

Brands: a customer belongs to one brand (``customers.brand``, FCB unless given); an
order is its customer's brand (an order naming another brand is refused), and its
proforma is that brand's: the brand's number sequence and payment reference, and the
issuer (name, address, VAT id, bank account) stored on the proforma at issue time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioner.domain import billing, catalog, customers
from provisioner.domain.lapse import lapse_date
from provisioner.domain.lifecycle import ProformaState, ServiceState
from provisioner.domain.policy import DEFAULT_BRAND, BrandPolicy, get_brand
from provisioner.errors import InvalidInput, NotFound
from provisioner.pipeline.engine.plan import OrderView, ServiceView, plan
from provisioner.pipeline.engine.runner import record
from provisioner.store.audit import audit
from provisioner.store.counters import next_number
from provisioner.store.lifecycle import Renewal
from provisioner.store.models import (
    Contact,
    Customer,
    DiscountCodeRow,
    Order,
    OrderItemRow,
    Proforma,
    ProformaLine,
    Service,
)
from provisioner.timeutil import utcnow


def customer_brand(data: Mapping[str, object]) -> str:
    """The brand code a customer's data name (``"brand"``), FCB when none."""
    value = data.get("brand") if isinstance(data, Mapping) else None
    if value is None or value == "":
        return DEFAULT_BRAND.code
    if not isinstance(value, str):
        raise InvalidInput(f"brand must be text, not {type(value).__name__}")
    return get_brand(value).code


def add_customer(session: Session, data: Mapping[str, object], actor: str) -> Customer:
    parsed = customers.parse_customer(data)
    brand = customer_brand(data)
    row = Customer(
        brand=brand,
        name=parsed.name,
        company=parsed.company,
        vat_id=parsed.vat_id,
        email=parsed.email,
        address=parsed.address,
        postal_code=parsed.postal_code,
        city=parsed.city,
        country=parsed.country,
        phone=parsed.phone,
        lang=parsed.lang,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    for role, contact in customers.contacts_for_domain(parsed).items():
        session.add(
            Contact(
                customer_id=row.id,
                role=str(role),
                name=contact.name,
                company=contact.company,
                email=contact.email,
                address=contact.address,
                postal_code=contact.postal_code,
                city=contact.city,
                country=contact.country,
                phone=contact.phone,
            )
        )
    audit(session, actor, "customer.created", "customer", row.id, {"brand": brand})
    return row


def _discount(session: Session, code: str | None) -> billing.DiscountCode | None:
    if not code:
        return None
    row = session.get(DiscountCodeRow, code.strip().upper())
    if row is None:
        raise InvalidInput(f"unknown discount code {code!r}")
    return billing.DiscountCode(
        code=row.code,
        percent=row.percent,
        amount=row.amount,
        kinds=frozenset(k for k in row.kinds.split(",") if k),
        valid_on_renewals=row.valid_on_renewals,
        first_year_promo=row.first_year_promo,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
    )


def _promo_history(session: Session, items: Sequence[catalog.OrderItem]) -> billing.PromoHistory:
    names = {i.name for i in items}
    used = session.execute(
        select(OrderItemRow.kind, OrderItemRow.name, OrderItemRow.product)
        .join(ProformaLine, ProformaLine.item_id == OrderItemRow.id)
        .join(Proforma, Proforma.id == ProformaLine.proforma_id)
        .where(
            ProformaLine.promo.is_(True),
            OrderItemRow.name.in_(names),
            Proforma.state != ProformaState.CANCELLED.value,
        )
    ).all()
    return billing.PromoHistory(
        services=frozenset(f"{k}:{n}" for k, n, _ in used if k != "domain"),
        domains=frozenset(n for k, n, _ in used if k == "domain"),
    )


def create_order(
    session: Session,
    *,
    customer_id: int,
    item_specs: Sequence[str],
    discount: str | None,
    brand: str | None,
    actor: str,
    today: date | None = None,
    paper_invoice: bool = False,
) -> tuple[Order, Proforma]:
    """An order and its proforma. ``brand`` None: the customer's brand; another brand than
    the customer's is refused. ``paper_invoice``: the invoice is posted too (the brand's
    fee is a line of the proforma; the invoice is listed by ``invoices list --to-post``)."""
    if not item_specs:
        raise InvalidInput("an order needs at least one --item")
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise NotFound(f"no customer {customer_id}")
    policy = order_brand(customer, brand)
    specs = [spec for spec in item_specs if spec.strip().lower() != PAPER_INVOICE_ITEM]
    paper_invoice = paper_invoice or len(specs) != len(item_specs)
    if not specs:
        raise InvalidInput("an order needs at least one service item besides the paper invoice")
    items = [catalog.parse_item(spec) for spec in specs]
    catalog.check_order_lines(items)
    today = today or utcnow().date()
    quote = billing.price_order(
        items,
        catalog=catalog.DEFAULT_CATALOG,
        policy=policy,
        today=today,
        discount=_discount(session, discount),
        promo_history=_promo_history(session, items),
        paper_invoice=paper_invoice,
    )
    now = utcnow()
    order = Order(
        customer_id=customer.id,
        brand=policy.code,
        status="open",
        discount_code=quote.discount_code,
        paper_invoice=paper_invoice,
        created_at=now,
    )
    session.add(order)
    session.flush()
    item_rows = []
    for position, item in enumerate(items, start=1):
        row = OrderItemRow(
            order_id=order.id,
            position=position,
            kind=item.kind,
            product=item.product,
            name=item.name,
            period_months=item.period_months,
            action=item.action,
            spec=item.to_spec(),
        )
        session.add(row)
        item_rows.append(row)
    session.flush()
    seq = next_number(session, "proforma", policy.code, today.year)
    proforma = Proforma(
        number=billing.proforma_number(today.year, seq, policy),
        reference=billing.payment_reference(today.year, seq, policy),
        brand=policy.code,
        issuer=billing.issuer(policy),
        order_id=order.id,
        state=ProformaState.OPEN.value,
        issued_on=today,
        due_date=quote.due_date,
        lapses_on=lapse_date(quote.due_date, policy),  # unpaid new orders lapse (issue 17 item 2)
        currency="EUR",
        net=quote.net,
        vat=quote.vat,
        gross=quote.gross,
    )
    session.add(proforma)
    session.flush()
    for line in quote.lines:
        session.add(
            ProformaLine(
                proforma_id=proforma.id,
                position=line.position,
                item_id=item_rows[line.position - 1].id if line.item is not None else None,
                description=line.description,
                unit_gross=line.unit_gross,
                discount_gross=line.discount_gross,
                net=line.net,
                vat=line.vat,
                gross=line.gross,
                vat_rate=line.vat_rate,
                promo=line.promo,
            )
        )
    for row in item_rows:
        session.add(
            Service(
                order_id=order.id,
                item_id=row.id,
                customer_id=customer.id,
                kind=row.kind,
                product=row.product,
                name=row.name,
                state=ServiceState.PENDING_PAYMENT.value,
                period_months=row.period_months,
                created_at=now,
                updated_at=now,
            )
        )
    session.flush()
    audit(session, actor, "order.created", "order", order.id,
          {"items": [i.to_spec() for i in items], "proforma": proforma.number,
           "brand": policy.code, "paper_invoice": paper_invoice})
    record(session, order.id, plan(order_view(session, order.id)))
    return order, proforma


PAPER_INVOICE_ITEM = "paper-invoice"  # `order create --item paper-invoice`


def order_brand(customer: Customer, brand: str | None) -> BrandPolicy:
    """The brand of a new order of ``customer``: the customer's; a ``brand`` given must be
    the same (one customer is never invoiced by, or pays into, two companies)."""
    policy = get_brand(customer.brand or DEFAULT_BRAND.code)
    if brand is not None and brand.strip() and get_brand(brand).code != policy.code:
        raise InvalidInput(f"customer {customer.id} is a customer of {policy.display_name or policy.name} "
                           f"(brand {policy.code}); an order of brand {get_brand(brand).code} is refused")
    return policy


def order_view(session: Session, order_id: int) -> OrderView:
    """The plain values `plan()` needs."""
    return order_views(session, [order_id])[order_id]


def order_views(session: Session, order_ids: Sequence[int]) -> dict[int, OrderView]:
    """`order_view` of many orders in four queries (the payment worker plans a batch of
    settled orders at once). Read as columns, so values written in this transaction by
    UPDATE statements are seen even where the session holds the row as an object."""
    ids = sorted(set(order_ids))
    if not ids:
        return {}
    renewal = dict(session.execute(select(Order.id, Order.renewal).where(Order.id.in_(ids))).all())
    missing = [i for i in ids if i not in renewal]
    if missing:
        raise NotFound(f"no order {missing[0]}")
    latest: dict[int, tuple[int, str, str]] = {}
    for oid, pid, number, state in session.execute(
            select(Proforma.order_id, Proforma.id, Proforma.number, Proforma.state)
            .where(Proforma.order_id.in_(ids)).order_by(Proforma.id)).all():
        latest[oid] = (pid, number, state)  # the newest one wins
    missing = [i for i in ids if i not in latest]
    if missing:
        raise NotFound(f"order {missing[0]} has no proforma")
    services: dict[int, list[ServiceView]] = {i: [] for i in ids}
    renewals = [i for i in ids if renewal[i]]
    if renewals:  # the services a renewal renews belong to their first order
        for oid, sid, kind, product, name, months, state, item_id, term, renew_months in session.execute(
                select(Renewal.order_id, Service.id, Service.kind, Service.product, Service.name,
                       Service.period_months, Service.state, Renewal.item_id, Renewal.term_expiry,
                       Renewal.months)
                .join(Renewal, Renewal.service_id == Service.id)
                .where(Renewal.order_id.in_(renewals))
                .order_by(Service.id)).all():
            services[oid].append(ServiceView(sid, kind, product, name, months, state, "renew",
                                             item_id, term.isoformat(), renew_months))
    firsts = [i for i in ids if not renewal[i]]
    if firsts:
        for oid, sid, kind, product, name, months, state, action, item_id in session.execute(
                select(Service.order_id, Service.id, Service.kind, Service.product, Service.name,
                       Service.period_months, Service.state, OrderItemRow.action, Service.item_id)
                .join(OrderItemRow, OrderItemRow.id == Service.item_id)
                .where(Service.order_id.in_(firsts))
                .order_by(Service.id)).all():
            services[oid].append(ServiceView(sid, kind, product, name, months, state, action,
                                             item_id))
    return {
        i: OrderView(order_id=i, proforma_id=latest[i][0], proforma_number=latest[i][1],
                     paid=latest[i][2] == ProformaState.PAID.value, services=tuple(services[i]))
        for i in ids
    }


def find_order(session: Session, ref: str) -> Order:
    """An order by id, or by the number of its proforma."""
    ref = ref.strip()
    order: Order | None = None
    if ref.isdigit():
        order = session.get(Order, int(ref))
    else:
        proforma = session.execute(
            select(Proforma).where(Proforma.number == ref)
        ).scalar_one_or_none()
        order = proforma.order if proforma else None
    if order is None:
        raise NotFound(f"no order {ref!r}")
    return order

"""Payments in: store the raw notification first, then record and match the payment.

1. The notification is stored raw under UNIQUE(provider, event_id) in its own
   transaction. A duplicate delivery stops here and changes nothing.
2. In a second transaction the payment is recorded under UNIQUE(provider, txn_id,
   kind) (one money movement reported by two events counts once), matched to its
   proforma, and if it settles the proforma, the proforma moves OPEN -> PAID with
   one conditional UPDATE, the services move to provisioning, and the plan is
   written into the journal. Nothing here talks to the broker: the caller
   dispatches after the commit, and the re-drive does it if the caller cannot.
3. If step 2 crashes, the notification stays `stored`; `reprocess_stored()` (run
   by the re-drive) finishes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.payments import PaymentNotice
from provisioner.clock import utcnow
from provisioner.domain import references
from provisioner.domain.lifecycle import ProformaState, ServiceState
from provisioner.domain.payments import MatchStatus, match_payment
from provisioner.errors import InvalidInput
from provisioner.pipeline.orders import order_view
from provisioner.pipeline.plan import plan
from provisioner.pipeline.runner import record
from provisioner.store.audit import audit
from provisioner.store.db import transaction
from provisioner.store.models import Notification, Order, Payment, Proforma, Service

log = logging.getLogger("provisioner.payments")


@dataclass(frozen=True)
class IngestResult:
    status: str  # duplicate | ignored | matched | underpaid | overpaid | ... | duplicate_txn
    notification_id: int | None
    order_id: int | None = None
    proforma: str | None = None
    settled: bool = False


def notice_to_json(notice: PaymentNotice) -> dict[str, object]:
    data = {f.name: getattr(notice, f.name) for f in fields(notice) if f.name != "raw"}
    data["amount"] = None if notice.amount is None else str(notice.amount)
    data["occurred_at"] = None if notice.occurred_at is None else notice.occurred_at.isoformat()
    return data


def notice_from_json(data: dict[str, object]) -> PaymentNotice:
    values = dict(data)
    values["amount"] = None if values.get("amount") is None else Decimal(str(values["amount"]))
    when = values.get("occurred_at")
    values["occurred_at"] = None if when is None else datetime.fromisoformat(str(when))
    return PaymentNotice(**values)  # type: ignore[arg-type]


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def store_notification(factory: sessionmaker[Session], notice: PaymentNotice) -> int | None:
    """Store the raw notification. Returns its id, or None if it was seen before."""
    with transaction(factory) as s:
        res = s.execute(
            _insert(s)(Notification)
            .values(
                provider=notice.provider,
                event_id=notice.event_id,
                received_at=utcnow(),
                raw=notice.raw,
                notice=notice_to_json(notice),
                status="stored",
            )
            .on_conflict_do_nothing(index_elements=["provider", "event_id"])
            .returning(Notification.id)
        )
        row = res.first()
        return None if row is None else int(row[0])


def ingest(factory: sessionmaker[Session], notice: PaymentNotice, actor: str) -> IngestResult:
    notification_id = store_notification(factory, notice)
    if notification_id is None:
        return IngestResult("duplicate", None)
    return process(factory, notification_id, notice, actor)


def _find_proforma(s: Session, notice: PaymentNotice) -> tuple[Proforma | None, str | None]:
    if notice.proforma:
        p = s.execute(
            select(Proforma).where(Proforma.number == notice.proforma.strip())
        ).scalar_one_or_none()
        if p is not None:
            return p, None
    if notice.reference:
        try:
            ref = references.parse_reference(notice.reference)
        except InvalidInput as exc:
            return None, f"payment reference {notice.reference!r} is invalid: {exc}"
        p = s.execute(select(Proforma).where(Proforma.reference == str(ref))).scalar_one_or_none()
        if p is not None:
            return p, None
        return None, f"no proforma with reference {ref}"
    if notice.proforma:
        return None, f"no proforma {notice.proforma!r}"
    return None, "the payment names no proforma and no reference"


def process(
    factory: sessionmaker[Session], notification_id: int, notice: PaymentNotice, actor: str
) -> IngestResult:
    with transaction(factory) as s:
        note = s.get(Notification, notification_id)
        assert note is not None
        if note.status != "stored":
            return IngestResult(note.status, notification_id)
        if notice.kind == "ignored" or notice.amount is None or not notice.txn_id:
            note.status = "ignored"
            return IngestResult("ignored", notification_id)
        proforma, why = _find_proforma(s, notice)
        kind = "reversal" if notice.kind == "reversal" else "payment"
        paid_so_far = Decimal("0")
        if proforma is not None:
            paid_so_far = s.execute(
                select(func.coalesce(func.sum(Payment.amount), 0)).where(
                    Payment.proforma_id == proforma.id,
                    Payment.kind == "payment",
                    Payment.currency == "EUR",
                    Payment.status.in_(
                        [MatchStatus.UNDERPAID.value, MatchStatus.MATCHED.value,
                         MatchStatus.OVERPAID.value]
                    ),
                )
            ).scalar_one()
        if kind == "reversal":
            status, settles, detail = MatchStatus.REVERSAL, False, (
                f"reversal of {notice.reverses_txn or notice.txn_id}: ops must review"
            )
        else:
            outcome = match_payment(
                amount=notice.amount,
                currency=(notice.currency or "").upper(),
                proforma_total=proforma.gross if proforma is not None else None,
                paid_so_far=Decimal(paid_so_far),
                proforma_state=proforma.state if proforma is not None else None,
            )
            status, settles, detail = outcome.status, outcome.settles, outcome.detail
            if why and proforma is None:
                detail = why
        res = s.execute(
            _insert(s)(Payment)
            .values(
                provider=notice.provider,
                txn_id=notice.txn_id,
                kind=kind,
                notification_id=notification_id,
                proforma_id=proforma.id if proforma is not None else None,
                amount=notice.amount,
                currency=(notice.currency or "").upper()[:3],
                reference=notice.reference,
                payer=notice.payer,
                status=status.value,
                detail=detail,
                received_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["provider", "txn_id", "kind"])
            .returning(Payment.id)
        )
        payment_row = res.first()
        if payment_row is None:
            note.status = "duplicate_txn"
            note.detail = f"transaction {notice.txn_id} was already recorded"
            return IngestResult("duplicate_txn", notification_id)
        note.status = "processed"
        audit(s, actor, "payment.recorded", "payment", payment_row[0],
              {"status": status.value, "amount": str(notice.amount),
               "proforma": proforma.number if proforma else None})
        settled = False
        order_id = proforma.order_id if proforma is not None else None
        if settles and proforma is not None:
            settled = _settle(s, proforma, actor)
        return IngestResult(
            status.value, notification_id, order_id,
            proforma.number if proforma is not None else None, settled,
        )


def _settle(s: Session, proforma: Proforma, actor: str) -> bool:
    """OPEN -> PAID exactly once; then services and the plan."""
    now = utcnow()
    res = s.execute(
        update(Proforma)
        .where(Proforma.id == proforma.id, Proforma.state == ProformaState.OPEN.value)
        .values(state=ProformaState.PAID.value, paid_at=now)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    s.expire(proforma)
    order = s.get(Order, proforma.order_id)
    assert order is not None
    order.status = "paid"
    for service in s.execute(
        select(Service).where(
            Service.order_id == order.id,
            Service.state == ServiceState.PENDING_PAYMENT.value,
        )
    ).scalars():
        service.state = ServiceState.PROVISIONING.value
        service.updated_at = now
    s.flush()
    audit(s, actor, "proforma.paid", "proforma", proforma.number)
    record(s, order.id, plan(order_view(s, order.id)))
    return True


def reprocess_stored(factory: sessionmaker[Session], older_than_s: float = 60.0) -> int:
    """Finish notifications whose processing crashed after they were stored. The raw
    bytes are parsed again by the provider's own parser."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with transaction(factory) as s:
        rows = list(
            s.execute(
                select(Notification.id, Notification.notice).where(
                    Notification.status == "stored", Notification.received_at < cutoff
                )
            ).all()
        )
    done = 0
    for nid, data in rows:
        process(factory, nid, notice_from_json(data), "system:reprocess")
        done += 1
    return done


def record_manual_payment(
    factory: sessionmaker[Session],
    *,
    proforma_number: str | None,
    reference: str | None,
    amount: Decimal,
    currency: str,
    method: str,
    txn: str,
    actor: str,
) -> IngestResult:
    """`provisioner payment record`: ops enter a payment by hand (e.g. cash, Moneta)."""
    if reference:
        references.parse_reference(reference)  # a wrong check digit is the caller's error
    if not txn or len(txn) > 200:
        raise InvalidInput("--txn must be the payment's transaction id (1-200 characters)")
    if method not in {"bank", "card", "paypal", "moneta", "cash"}:
        raise InvalidInput(f"unknown payment method {method!r}")
    notice = PaymentNotice(
        provider=f"manual-{method}",
        event_id=txn,
        kind="payment",
        txn_id=txn,
        amount=amount,
        currency=currency.upper(),
        proforma=proforma_number,
        reference=reference,
        payer=None,
        occurred_at=utcnow(),
        raw=f"manual payment by {actor}: {proforma_number or reference} {amount} {currency}".encode(),
    )
    return ingest(factory, notice, actor)

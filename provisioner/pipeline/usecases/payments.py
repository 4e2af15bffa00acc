"""Payments in: store the raw notification first, then record and match the payment.

Webhooks (`NotificationWriter`, `store_batch`): the notification is stored raw under
UNIQUE(provider, event_id) and the request is answered; concurrent deliveries share
one commit. A duplicate delivery stops there and changes nothing. `process_pending`
(a worker task, nudged by the API; the beat runs it as a backstop) then does step 2
for every stored notification.

Bank statements and manual payments (`ingest`): store, then step 2 inside a SAVEPOINT
of the same transaction, one commit; if step 2 fails only the savepoint rolls back,
the notification stays committed as `stored` and `process_pending` finishes it.

Step 2: the payment is recorded under UNIQUE(provider, txn_id, kind) (one money
movement reported by two events counts once), matched to its proforma (row-locked),
and if it settles the proforma, the proforma moves OPEN -> PAID with one conditional
UPDATE, the services move to provisioning, and the plan is written into the journal.
Nothing here talks to the broker: the caller dispatches after the commit, and the
re-drive does it if the caller cannot.

PayPal: a delivery's transmission id is claimed (`provisioner.store.webhooks`) in the
transaction that stores its notification, so a captured delivery is used once
(``replayed`` otherwise); and a PayPal payment is matched only after ``confirm`` (PayPal's
REST API, built by the composition root) confirms its capture. A capture PayPal does not
confirm is recorded as ``unconfirmed`` for ops and never settles; PayPal not answering
leaves the notification stored for the re-drive.

The worker settles in batches (`process_pending`, `_settle_batch`): one transaction per
batch of stored notifications, claimed oldest first with FOR UPDATE SKIP LOCKED (two
workers on PostgreSQL take disjoint batches; SQLite has one writer at a time); the
proformas they name are locked in one query, and what the batch adds besides the
payments (statuses, orders paid, the plans' steps, audit entries) is written with one
statement per kind before the commit. A crash before the commit leaves nothing of the
batch; the next run settles it, once. What a batch writes is what one notification in a
transaction of its own writes (`_Writes`, `_BatchWrites`).

One notification never holds up the others (`process_pending`): one whose processing
fails becomes `error` with the reason, ops are alerted once, and `payments list
--unmatched` lists it (with the notices that name no transaction id, `no_txn_id`);
a passing failure (database busy or unreachable) leaves it `stored` for the next run.
A reversal counts against the proforma of the payment it reverses, so one recorded
before settlement lowers what counts as paid.

Brands: a credit booked on a brand's bank account (``PaymentNotice.account``) pays only
that brand's proformas; one naming another brand's proforma is recorded unmatched for
ops (`_wrong_account`), never settled.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from provisioner.adapters.payments import PaymentNotice
from provisioner.domain import references
from provisioner.domain.lifecycle import ProformaState, ServiceState
from provisioner.domain.payments import MatchStatus, match_payment
from provisioner.domain.policy import brand_for_account, get_brand
from provisioner.errors import ConfigurationError, InvalidInput, TransientError
from provisioner.pipeline.capabilities.lifecycle.lapse import note_late_payment
from provisioner.pipeline.engine.plan import Planner
from provisioner.pipeline.engine.ports import OpsAlert
from provisioner.pipeline.engine.runner import record, record_many
from provisioner.pipeline.usecases.orders import order_view, order_views
from provisioner.pipeline.usecases.withdrawal import own_refund
from provisioner.store.audit import audit, audit_values
from provisioner.store.db import transaction
from provisioner.store.models import AuditEntry, Notification, Order, Payment, Proforma, Service
from provisioner.store.webhooks import Claim
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.payments")

# The provider's API confirms a payment before it is matched (PayPal: the capture).
Confirm = Callable[[PaymentNotice], PaymentNotice]
# Providers whose payments are never matched unconfirmed: without a ``confirm`` their
# notifications stay stored.
_CONFIRMED_BY_API = frozenset({"paypal"})


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


def _dialect(session: Session) -> str:
    return "postgresql" if session.get_bind().dialect.name == "postgresql" else "sqlite"


_NOTIFICATIONS = cast(Table, Notification.__table__)
_PAYMENTS = cast(Table, Payment.__table__)
_PAID_STATUSES = [MatchStatus.UNDERPAID.value, MatchStatus.MATCHED.value,
                  MatchStatus.OVERPAID.value]
# Built once: (dialect) -> statement; values come in as parameters.
_STORE = {
    name: ins(_NOTIFICATIONS)
    .on_conflict_do_nothing(index_elements=["provider", "event_id"])
    .returning(_NOTIFICATIONS.c.id)
    for name, ins in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_RECORD_PAYMENT = {
    name: ins(_PAYMENTS)
    .on_conflict_do_nothing(index_elements=["provider", "txn_id", "kind"])
    .returning(_PAYMENTS.c.id)
    for name, ins in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
# SKIP LOCKED: two processors never work on the same notification at once (PostgreSQL;
# SQLite has one writer at a time anyway and ignores FOR UPDATE).
_NOTIFICATION_STATUS = select(_NOTIFICATIONS.c.status).where(
    _NOTIFICATIONS.c.id == bindparam("nid")).with_for_update(skip_locked=True)
_SET_NOTIFICATION = (
    update(_NOTIFICATIONS)
    .where(_NOTIFICATIONS.c.id == bindparam("nid"))
    .values(status=bindparam("new_status"))
)
_SET_NOTIFICATION_DETAIL = _SET_NOTIFICATION.values(detail=bindparam("new_detail"))
# The proforma row is locked while a payment is matched against it, so two partial
# payments processed at once see each other's amounts.
_PROFORMA_BY_NUMBER = select(Proforma).where(
    Proforma.number == bindparam("number")).with_for_update()
_PROFORMA_BY_REFERENCE = select(Proforma).where(
    Proforma.reference == bindparam("reference")).with_for_update()
# EUR payments that count, less the reversals (refunds, chargebacks) recorded against
# the proforma: money that went back does not pay it.
_PAID = func.coalesce(func.sum(case(
    (_PAYMENTS.c.kind == "reversal", -_PAYMENTS.c.amount), else_=_PAYMENTS.c.amount)), 0)
_COUNTED = (
    _PAYMENTS.c.currency == "EUR",
    or_(and_(_PAYMENTS.c.kind == "payment", _PAYMENTS.c.status.in_(_PAID_STATUSES)),
        and_(_PAYMENTS.c.kind == "reversal", _PAYMENTS.c.status == MatchStatus.REVERSAL.value)),
)
_PAID_SO_FAR = select(_PAID).where(_PAYMENTS.c.proforma_id == bindparam("pid"), *_COUNTED)
# The same for a batch's proformas at once (`_lock_proformas`).
_PAID_BY_PROFORMA = (
    select(_PAYMENTS.c.proforma_id, _PAID)
    .where(_PAYMENTS.c.proforma_id.in_(bindparam("pids", expanding=True)), *_COUNTED)
    .group_by(_PAYMENTS.c.proforma_id)
)
# The proforma of the payment a reversal reverses (a refund names the payment, not the
# proforma).
_REVERSED_PROFORMA = select(_PAYMENTS.c.proforma_id).where(
    _PAYMENTS.c.provider == bindparam("provider"),
    _PAYMENTS.c.txn_id == bindparam("txn"),
    _PAYMENTS.c.kind == "payment",
    _PAYMENTS.c.proforma_id.is_not(None),
)
_PROFORMA_BY_ID = select(Proforma).where(Proforma.id == bindparam("pid")).with_for_update()
# A notification whose processing failed: `error`, once (the ops alert goes with this).
_MARK_ERROR = (
    update(_NOTIFICATIONS)
    .where(_NOTIFICATIONS.c.id == bindparam("nid"), _NOTIFICATIONS.c.status == "stored")
    .values(status="error", detail=bindparam("new_detail"))
)
_PROFORMAS = cast(Table, Proforma.__table__)
_SETTLE_PROFORMA = (
    update(_PROFORMAS)
    .where(_PROFORMAS.c.id == bindparam("pid"), _PROFORMAS.c.state == ProformaState.OPEN.value)
    .values(state=ProformaState.PAID.value, paid_at=bindparam("now"))
)
_ORDERS = cast(Table, Order.__table__)
_ORDER_PAID = update(_ORDERS).where(_ORDERS.c.id == bindparam("oid")).values(status="paid")
_SERVICES = cast(Table, Service.__table__)
_SERVICES_PROVISIONING = (
    update(_SERVICES)
    .where(_SERVICES.c.order_id == bindparam("oid"),
           _SERVICES.c.state == ServiceState.PENDING_PAYMENT.value)
    .values(state=ServiceState.PROVISIONING.value, updated_at=bindparam("now"))
)

# A batch's (`_BatchWrites.flush`): one statement each.
_NOTIFICATIONS_PROCESSED = (
    update(_NOTIFICATIONS)
    .where(_NOTIFICATIONS.c.id.in_(bindparam("nids", expanding=True)))
    .values(status="processed")
)
_ORDERS_PAID = update(_ORDERS).where(_ORDERS.c.id.in_(bindparam("oids", expanding=True))).values(
    status="paid")
_ORDERS_SERVICES_PROVISIONING = (
    update(_SERVICES)
    .where(_SERVICES.c.order_id.in_(bindparam("oids", expanding=True)),
           _SERVICES.c.state == ServiceState.PENDING_PAYMENT.value)
    .values(state=ServiceState.PROVISIONING.value, updated_at=bindparam("now"))
)


def _store(s: Session, notice: PaymentNotice) -> int | None:
    row = s.execute(_STORE[_dialect(s)], {
        "provider": notice.provider,
        "event_id": notice.event_id,
        "received_at": utcnow(),
        "raw": notice.raw,
        "notice": notice_to_json(notice),
        "status": "stored",
    }).first()
    return None if row is None else int(row[0])


_STORE_SQL = {
    "sqlite": "INSERT INTO notifications (provider, event_id, received_at, raw, notice, status) "
              "VALUES (?, ?, ?, ?, ?, 'stored') ON CONFLICT (provider, event_id) DO NOTHING "
              "RETURNING id",
    "postgresql": "INSERT INTO notifications (provider, event_id, received_at, raw, notice, status) "
                  "VALUES (%s, %s, %s, %s, %s, 'stored') ON CONFLICT (provider, event_id) "
                  "DO NOTHING RETURNING id",
}


def _store_rows(conn: Any, dialect: str, notices: list[PaymentNotice],
                claims: list[Claim | None] | None = None) -> list[IngestResult]:
    """INSERT .. ON CONFLICT DO NOTHING for each notice on a DBAPI connection, one commit.
    A notice with a claim that was taken before is not stored (``replayed``)."""
    now = utcnow()
    received: object = now.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect == "sqlite" else now
    try:
        cur = conn.cursor()
        if dialect == "sqlite":
            cur.execute("BEGIN IMMEDIATE")
        results = []
        for notice, claim in zip(notices, claims or [None] * len(notices), strict=True):
            if claim is not None and not claim(cur, dialect):
                results.append(IngestResult("replayed", None))
                continue
            cur.execute(_STORE_SQL[dialect], (notice.provider, notice.event_id, received,
                                              notice.raw, json.dumps(notice_to_json(notice))))
            row = cur.fetchone()
            results.append(IngestResult("duplicate", None) if row is None
                           else IngestResult("accepted", int(row[0])))
        conn.commit()
        return results
    except BaseException:
        conn.rollback()
        raise


def store_batch(factory: sessionmaker[Session], notices: list[PaymentNotice],
                claims: list[Claim | None] | None = None) -> list[IngestResult]:
    """Store several notifications in one transaction (one commit): `accepted` or
    `duplicate` for each, in order (`replayed` for one whose claim was taken before).

    This is the hottest statement of the product (every webhook delivery), so it runs
    on the pool's DBAPI connection with a fixed SQL text: no ORM session, no statement
    compilation per row. The columns and formats are those of the `Notification` model
    (SQLite keeps datetimes as UTC text in SQLAlchemy's format)."""
    engine = factory.kw["bind"]
    dialect = "postgresql" if engine.dialect.name == "postgresql" else "sqlite"
    conn = engine.raw_connection()
    try:
        return _store_rows(conn, dialect, notices, claims)
    finally:
        conn.close()


class NotificationWriter:
    """Group commit for the webhook path. Each request appends its notification and
    awaits; one flusher task stores everything that arrived meanwhile in ONE
    transaction in a worker thread (one INSERT .. ON CONFLICT DO NOTHING each, one
    commit), then answers every request of the batch. A notification is committed
    before its request is answered; a burst costs one commit and one thread hop per
    batch, not per request. A database error fails the batch's requests (the
    providers deliver again) and stores nothing of it."""

    def __init__(self, factory: sessionmaker[Session], *, max_batch: int = 256,
                 on_accepted: Callable[[], None] | None = None) -> None:
        self._factory = factory
        self._max_batch = max_batch
        self._on_accepted = on_accepted
        self._pending: list[tuple[PaymentNotice, Claim | None, asyncio.Future[IngestResult]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, notice: PaymentNotice, claim: Claim | None = None) -> IngestResult:
        """Store ``notice`` (with ``claim``, in the same transaction, when it has one)."""
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._pending.append((notice, claim, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[:self._max_batch]
            del self._pending[:self._max_batch]
            notices = [notice for notice, _, _ in batch]
            claims = [claim for _, claim, _ in batch]
            try:
                results = await asyncio.to_thread(store_batch, self._factory, notices, claims)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                log.exception("could not store %d notification(s)", len(batch))
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
            if self._on_accepted is not None and any(r.status == "accepted" for r in results):
                self._on_accepted()


def ingest(factory: sessionmaker[Session], notice: PaymentNotice, actor: str,
           planner: Planner) -> IngestResult:
    """Store, then process in a savepoint; one commit. A processing error rolls back the
    savepoint only, so the notification stays stored (and committed), then propagates."""
    failure: Exception | None = None
    with transaction(factory) as s:
        notification_id = _store(s, notice)
        if notification_id is None:
            return IngestResult("duplicate", None)
        try:
            with s.begin_nested():
                result = _process(s, notification_id, "stored", notice, actor, planner)
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the commit
            failure = exc
    if failure is not None:
        raise failure
    return result


def _find_proforma(s: Session, notice: PaymentNotice,
                   known: _Known | None = None) -> tuple[Proforma | None, str | None]:
    """The proforma a payment names (by number, else by its payment reference), row-locked.
    ``known``: the batch's proformas, locked already (`_lock_proformas`); one not among
    them is looked up."""
    if notice.proforma:
        number = notice.proforma.strip()
        p = known.numbers.get(number) if known is not None else None
        if p is None:
            p = s.execute(_PROFORMA_BY_NUMBER, {"number": number}).scalar_one_or_none()
        if p is not None:
            return p, None
    if notice.reference:
        try:
            ref = references.parse_reference(notice.reference)
        except InvalidInput as exc:
            return None, f"payment reference {notice.reference!r} is invalid: {exc}"
        p = known.references.get(str(ref)) if known is not None else None
        if p is None:
            p = s.execute(_PROFORMA_BY_REFERENCE, {"reference": str(ref)}).scalar_one_or_none()
        if p is not None:
            return p, None
        return None, f"no proforma with reference {ref}"
    if notice.proforma:
        return None, f"no proforma {notice.proforma!r}"
    return None, "the payment names no proforma and no reference"


def _wrong_account(proforma: Proforma | None, notice: PaymentNotice) -> str | None:
    """Why a payment booked on a bank account (``notice.account``) may not pay
    ``proforma``: the account is not the proforma's brand's. None when it may."""
    if proforma is None or notice.account is None:
        return None
    brand = get_brand(proforma.brand)
    if brand.account == "".join(notice.account.split()).upper():
        return None
    owner = brand_for_account(notice.account)
    return (f"paid into {owner.code if owner else 'another'} account {notice.account}, but "
            f"proforma {proforma.number} is {brand.code}'s (account {brand.account}): "
            "not settled; ops must return or move the money")


def process(
    factory: sessionmaker[Session], notification_id: int, notice: PaymentNotice, actor: str,
    planner: Planner, confirm: Confirm | None = None,
) -> IngestResult:
    """Process a stored notification in a transaction of its own (the re-drive's way).
    A payment the provider's API must confirm (PayPal) is confirmed first, outside the
    transaction; ``deferred`` when the API cannot be asked now (it stays stored)."""
    confirmed, unconfirmed = _confirm(notice, confirm)
    if confirmed is None and unconfirmed is None:
        return IngestResult("deferred", notification_id)
    with transaction(factory) as s:
        status = s.execute(_NOTIFICATION_STATUS, {"nid": notification_id}).scalar_one_or_none()
        if status is None:  # another processor holds it right now
            return IngestResult("busy", notification_id)
        if confirmed is None:
            return _record_unconfirmed(s, notification_id, status, notice, str(unconfirmed), actor)
        return _process(s, notification_id, status, confirmed, actor, planner)


def _confirm(notice: PaymentNotice, confirm: Confirm | None) -> tuple[PaymentNotice | None, str | None]:
    """``(notice to match, None)`` when it needs no confirmation or the provider's API
    confirmed it (with the API's amount, currency and proforma); ``(None, why)`` when the
    API does not confirm it; ``(None, None)`` when the API cannot be asked now."""
    if (notice.provider not in _CONFIRMED_BY_API or notice.kind != "payment"
            or notice.amount is None or not notice.txn_id):
        return notice, None
    try:
        if confirm is None:
            raise ConfigurationError(f"{notice.provider} payments are confirmed through its API, "
                                     "and this process was given no way to ask it")
        return confirm(notice), None
    except (TransientError, ConfigurationError) as exc:
        log.log(logging.ERROR if isinstance(exc, ConfigurationError) else logging.WARNING,
                "%s payment %s (event %s) cannot be confirmed now; left for the re-drive: %s",
                notice.provider, notice.txn_id, notice.event_id, exc)
        return None, None
    except InvalidInput as exc:
        log.warning("%s payment %s (event %s) is not confirmed: %s", notice.provider,
                    notice.txn_id, notice.event_id, exc)
        return None, str(exc)


def _record_unconfirmed(s: Session, notification_id: int, note_status: str, notice: PaymentNotice,
                        detail: str, actor: str) -> IngestResult:
    """A payment its provider's API does not confirm: recorded for ops (kind and status
    ``unconfirmed``, listed by `payments list --unmatched`), never matched or settled.
    Its own kind leaves the (provider, txn_id, payment) slot to the real payment."""
    if note_status != "stored":
        return IngestResult(note_status, notification_id)
    proforma, _ = _find_proforma(s, notice)
    row = s.execute(_RECORD_PAYMENT[_dialect(s)], {
        "provider": notice.provider,
        "txn_id": notice.txn_id,
        "kind": "unconfirmed",
        "notification_id": notification_id,
        "proforma_id": proforma.id if proforma is not None else None,
        "amount": notice.amount,
        "currency": (notice.currency or "").upper()[:3],
        "reference": (notice.reference or "")[:60] or None,
        "payer": (notice.payer or "")[:200] or None,
        "status": "unconfirmed",
        "detail": detail,
        "received_at": utcnow(),
    }).first()
    _set_status(s, notification_id, "unconfirmed", detail)
    if row is not None:
        audit(s, actor, "payment.unconfirmed", "payment", row[0],
              {"amount": str(notice.amount), "detail": detail[:500],
               "proforma": proforma.number if proforma is not None else None})
    return IngestResult("unconfirmed", notification_id,
                        proforma=proforma.number if proforma is not None else None)


def _set_status(s: Session, notification_id: int, status: str, detail: str | None = None) -> None:
    if detail is None:
        s.execute(_SET_NOTIFICATION, {"nid": notification_id, "new_status": status})
    else:
        s.execute(_SET_NOTIFICATION_DETAIL,
                  {"nid": notification_id, "new_status": status, "new_detail": detail})


def _process(
    s: Session, notification_id: int, note_status: str, notice: PaymentNotice, actor: str,
    planner: Planner, writes: _Writes | None = None, known: _Known | None = None,
) -> IngestResult:
    writes = writes or _DIRECT
    if note_status != "stored":
        return IngestResult(note_status, notification_id)
    if notice.kind == "ignored" or notice.amount is None:
        _set_status(s, notification_id, "ignored")
        return IngestResult("ignored", notification_id)
    if not notice.txn_id:  # nothing to record it under (and to keep it to once): ops
        _set_status(s, notification_id, "no_txn_id",
                    f"{notice.kind} of {notice.amount} {notice.currency or '?'} without a transaction "
                    "id: not recorded; ops must look at it")
        return IngestResult("no_txn_id", notification_id)
    proforma, why = _find_proforma(s, notice, known)
    wrong_account = _wrong_account(proforma, notice)
    if wrong_account is not None:
        proforma, why = None, wrong_account
    if proforma is None and notice.kind == "reversal" and notice.reverses_txn:
        proforma = _reversed_proforma(s, notice)
    kind = "reversal" if notice.kind == "reversal" else "payment"
    paid_so_far = Decimal("0")
    if proforma is not None:
        paid = known.paid.get(proforma.id) if known is not None else None
        if paid is None:
            paid = Decimal(s.execute(_PAID_SO_FAR, {"pid": proforma.id}).scalar_one())
        paid_so_far = max(paid, Decimal(0))
    if kind == "reversal":
        status, settles, detail = MatchStatus.REVERSAL, False, (
            f"reversal of {notice.reverses_txn or notice.txn_id}: ops must review"
        )
        ours = own_refund(s, notice.provider, notice.reverses_txn, notice.amount)
        if ours is not None:  # a withdrawal's refund coming back from the provider
            detail = f"refund of credit note {ours} (withdrawal), made by us: nothing to review"
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
    payment_row = s.execute(_RECORD_PAYMENT[_dialect(s)], {
        "provider": notice.provider,
        "txn_id": notice.txn_id,
        "kind": kind,
        "notification_id": notification_id,
        "proforma_id": proforma.id if proforma is not None else None,
        "amount": notice.amount,
        "currency": (notice.currency or "").upper()[:3],
        "reference": notice.reference,
        "payer": notice.payer,
        "status": status.value,
        "detail": detail,
        "received_at": utcnow(),
    }).first()
    if known is not None and proforma is not None:
        known.paid.pop(proforma.id, None)  # it changed: asked again if another pays it
    if payment_row is None:
        _set_status(s, notification_id, "duplicate_txn",
                    f"transaction {notice.txn_id} was already recorded")
        return IngestResult("duplicate_txn", notification_id)
    writes.processed(s, notification_id)
    writes.audit(s, actor, "payment.recorded", "payment", payment_row[0],
                 {"status": status.value, "amount": str(notice.amount),
                  "proforma": proforma.number if proforma else None})
    if status is MatchStatus.PROFORMA_CANCELLED and proforma is not None:
        note_late_payment(s, payment_row[0], proforma)  # a lapsed order's: ops told once
    settled = False
    order_id = proforma.order_id if proforma is not None else None
    if settles and proforma is not None:
        settled = _settle(s, proforma, actor, planner, writes)
    return IngestResult(
        status.value, notification_id, order_id,
        proforma.number if proforma is not None else None, settled,
    )


def _reversed_proforma(s: Session, notice: PaymentNotice) -> Proforma | None:
    pid = s.execute(_REVERSED_PROFORMA, {"provider": notice.provider, "txn": notice.reverses_txn}).scalar()
    return None if pid is None else s.execute(_PROFORMA_BY_ID, {"pid": pid}).scalar_one_or_none()


def _settle(s: Session, proforma: Proforma, actor: str, planner: Planner,
            writes: _Writes) -> bool:
    """OPEN -> PAID exactly once; then services and the plan (in the same transaction)."""
    now = utcnow()
    res = s.execute(_SETTLE_PROFORMA, {"pid": proforma.id, "now": now})
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    order_id, number = proforma.order_id, proforma.number
    s.expire(proforma, ["state", "paid_at"])  # the UPDATE above wrote them
    writes.settled(s, order_id, now, planner)
    writes.audit(s, actor, "proforma.paid", "proforma", number)
    return True


# Failures that pass: the notification stays `stored` and the next run tries again.
_RETRY_LATER = (TransientError, OperationalError, InterfaceError, PoolTimeout)
#: Notifications settled per transaction by `process_pending`.
BATCH = 100
_AUDIT = cast(Table, AuditEntry.__table__)


class _Writes:
    """What `_process` writes besides the payment: the notification `processed`, the
    settled order paid with its services provisioning and its plan in the journal, the
    audit entries. Here straight into the session (a notification in a transaction of
    its own); `_BatchWrites` writes a batch's together."""

    def processed(self, s: Session, notification_id: int) -> None:
        _set_status(s, notification_id, "processed")

    def settled(self, s: Session, order_id: int, now: datetime, planner: Planner) -> None:
        s.execute(_ORDER_PAID, {"oid": order_id})
        s.execute(_SERVICES_PROVISIONING, {"oid": order_id, "now": now})
        record(s, order_id, planner.plan(order_view(s, order_id)))

    def audit(self, s: Session, actor: str, action: str, entity: str,
              entity_id: object | None = None, detail: dict[str, Any] | None = None) -> None:
        audit(s, actor, action, entity, entity_id, detail)


_DIRECT = _Writes()


class _BatchWrites(_Writes):
    """A batch's: collected while its notifications are processed, then written before
    the batch commits (`flush`), each kind in one statement: the notifications'
    status, the orders paid and their services provisioning (an UPDATE over the ids
    each; the services' ``updated_at`` is the last settlement's time), the settled
    orders' plans (their views read in a few queries, `order_views`; one INSERT of all
    the steps, `record_many`), the audit entries (one INSERT of all, in the order they
    were made). What a notification added is dropped when its savepoint rolls back
    (`mark`, `drop_since`)."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.done: list[int] = []  # notifications processed
        self.orders: list[tuple[int, datetime]] = []  # orders settled, in that order
        self.audits: list[dict[str, Any]] = []

    def processed(self, s: Session, notification_id: int) -> None:
        self.done.append(notification_id)

    def settled(self, s: Session, order_id: int, now: datetime, planner: Planner) -> None:
        self.orders.append((order_id, now))

    def audit(self, s: Session, actor: str, action: str, entity: str,
              entity_id: object | None = None, detail: dict[str, Any] | None = None) -> None:
        self.audits.append(audit_values(actor, action, entity, entity_id, detail))

    def mark(self) -> tuple[int, int, int]:
        return len(self.done), len(self.orders), len(self.audits)

    def drop_since(self, mark: tuple[int, int, int]) -> None:
        del self.done[mark[0]:]
        del self.orders[mark[1]:]
        del self.audits[mark[2]:]

    def flush(self, s: Session) -> None:
        if self.done:
            s.execute(_NOTIFICATIONS_PROCESSED, {"nids": self.done})
        if self.orders:
            oids = [oid for oid, _ in self.orders]
            s.execute(_ORDERS_PAID, {"oids": oids})
            s.execute(_ORDERS_SERVICES_PROVISIONING, {"oids": oids, "now": self.orders[-1][1]})
            views = order_views(s, oids)
            record_many(s, [(oid, self.planner.plan(views[oid])) for oid in oids])
        if self.audits:
            s.execute(insert(_AUDIT), self.audits)


@dataclass
class _Known:
    """A batch's proformas, by number and by payment reference, locked in id order, and
    what is paid of each (`_PAID_SO_FAR`) until the batch records a payment for it."""

    numbers: dict[str, Proforma] = field(default_factory=dict)
    references: dict[str, Proforma] = field(default_factory=dict)
    paid: dict[int, Decimal] = field(default_factory=dict)


def _lock_proformas(s: Session, notices: list[PaymentNotice | None]) -> _Known:
    """The proformas a batch's payments name, read and row-locked in one query, in id
    order (two workers' batches lock what they share in the same order), and what is
    paid of them in another. A payment for a proforma is recorded only under its lock,
    so what is paid changes only by what the batch records itself (`_process`)."""
    numbers = {n.proforma.strip() for n in notices if n is not None and n.proforma}
    refs: set[str] = set()
    for n in notices:
        if n is not None and n.reference:
            try:
                refs.add(str(references.parse_reference(n.reference)))
            except InvalidInput:
                continue  # `_find_proforma` says why
    known = _Known()
    if not numbers and not refs:
        return known
    for p in s.execute(select(Proforma).where(or_(Proforma.number.in_(sorted(numbers)),
                                                   Proforma.reference.in_(sorted(refs))))
                       .order_by(Proforma.id).with_for_update()).scalars():
        known.numbers[p.number] = p
        if p.reference:
            known.references[p.reference] = p
        known.paid[p.id] = Decimal(0)
    if known.paid:
        known.paid.update((pid, Decimal(paid)) for pid, paid in s.execute(
            _PAID_BY_PROFORMA, {"pids": sorted(known.paid)}).all())
    return known


def _reason(exc: Exception) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first_line}"[:1000]


def _what(notification_id: int, data: object) -> str:
    notice = data if isinstance(data, dict) else {}
    return f"payment notification {notification_id} ({notice.get('provider')} {notice.get('event_id')})"


def _alert_error(alert: OpsAlert | None, notification_id: int, data: object, reason: str) -> None:
    """Ops are told about a notification marked `error` (by the one run that marked it)."""
    if alert is None:
        return
    try:
        alert(step_key=f"notification:{notification_id}", order_id=0, attempts=1,
              detail=f"{_what(notification_id, data)} could not be processed and is not settled "
                     f"(see `provisioner payments list --unmatched`): {reason}")
    except Exception:  # noqa: BLE001 - the alert is best effort; the log line stays
        log.exception("could not send the ops alert for notification %s", notification_id)


def _fail(factory: sessionmaker[Session], notification_id: int, data: object, exc: Exception,
          alert: OpsAlert | None) -> IngestResult:
    """Mark a notification whose processing failed `error` with the reason; the one run
    that marks it alerts ops (so once per notification)."""
    reason = _reason(exc)
    log.error("%s could not be processed, marked error: %s", _what(notification_id, data), reason,
              exc_info=exc)
    with transaction(factory) as s:
        res = s.execute(_MARK_ERROR, {"nid": notification_id, "new_detail": reason})
        marked = res.rowcount == 1  # type: ignore[attr-defined]
    if marked:
        _alert_error(alert, notification_id, data, reason)
    return IngestResult("error", notification_id)


def _process_one(factory: sessionmaker[Session], planner: Planner, notification_id: int,
                 data: object, actor: str, confirm: Confirm | None,
                 alert: OpsAlert | None) -> IngestResult:
    """One stored notification in a transaction of its own (`process`): `error` if it
    fails, `retry` (left stored) if the failure passes."""
    try:
        return process(factory, notification_id, notice_from_json(cast(dict[str, object], data)),
                       actor, planner, confirm)
    except _RETRY_LATER as exc:
        log.warning("payment notification %s: %s; left stored for the next run", notification_id, exc)
        return IngestResult("retry", notification_id)
    except Exception as exc:  # noqa: BLE001 - one bad notification must not stop the rest
        return _fail(factory, notification_id, data, exc, alert)


def _claim(size: int) -> Any:
    """The batch's notifications, oldest first, row-locked; SKIP LOCKED: a second worker
    takes the next ones instead of waiting (PostgreSQL; SQLite has one writer at a time
    and ignores FOR UPDATE). Providers whose API confirms a payment (PayPal) are not
    batched: the confirmation is an HTTP call, made outside any transaction."""
    n = _NOTIFICATIONS.c
    return (select(n.id, n.notice)
            .where(n.status == "stored", n.received_at <= bindparam("cutoff"),
                   n.id > bindparam("after"), n.provider.not_in(sorted(_CONFIRMED_BY_API)))
            .order_by(n.id).limit(size).with_for_update(skip_locked=True))


def _notice(data: object) -> PaymentNotice | None:
    try:
        return notice_from_json(cast(dict[str, object], data))
    except Exception:  # noqa: BLE001 - `_process_in_batch` marks it error with the reason
        return None


def _process_in_batch(s: Session, notification_id: int, data: object, actor: str,
                      planner: Planner, writes: _BatchWrites, known: _Known,
                      marked: list[tuple[int, object, str]] | None) -> IngestResult:
    """One notification of a batch. ``marked`` None: straight in the batch's transaction,
    any failure fails the batch. Else in a SAVEPOINT: if it fails, only what it did rolls
    back; it is marked `error` in the batch (``marked``: ops are alerted after the
    commit), or left stored if the failure passes (`retry`)."""
    if marked is None:
        return _process(s, notification_id, "stored", notice_from_json(cast(dict[str, object], data)),
                        actor, planner, writes, known)
    mark = writes.mark()
    try:
        with s.begin_nested():
            notice = notice_from_json(cast(dict[str, object], data))
            return _process(s, notification_id, "stored", notice, actor, planner, writes, known)
    except _RETRY_LATER as exc:
        writes.drop_since(mark)
        log.warning("payment notification %s: %s; left stored for the next run", notification_id, exc)
        return IngestResult("retry", notification_id)
    except Exception as exc:  # noqa: BLE001 - one bad notification must not stop the rest
        writes.drop_since(mark)
        reason = _reason(exc)
        log.error("%s could not be processed, marked error: %s", _what(notification_id, data),
                  reason, exc_info=exc)
        res = s.execute(_MARK_ERROR, {"nid": notification_id, "new_detail": reason})
        if res.rowcount == 1:  # type: ignore[attr-defined]
            marked.append((notification_id, data, reason))
        return IngestResult("error", notification_id)


class _Redo(Exception):
    """A notification of a batch run without savepoints failed: the batch rolls back and
    runs again with them."""


def _settle_batch(
    factory: sessionmaker[Session], planner: Planner, *, size: int, after: int,
    cutoff: datetime, actor: str, alert: OpsAlert | None,
) -> tuple[list[IngestResult], list[int]]:
    """One transaction: claim up to ``size`` stored notifications (`_claim`), lock the
    proformas they name (`_lock_proformas`), process each, write what the batch adds in
    one statement per kind (`_BatchWrites.flush`), commit; then alert ops of those marked
    `error`. Returns the results and the ids claimed.

    Nothing of a batch is half-done: a crash anywhere before the commit rolls all of it
    back, and the next run settles its notifications once. The batch runs first without
    savepoints (two round trips fewer per notification); if one of its notifications
    fails, it rolls back and runs again with a savepoint for each, so the failing one is
    marked `error` (or left stored, if the failure passes) and the others settle. If the
    batch fails as a whole (its final statements, the commit), a passing failure leaves
    them all stored (`retry`); any other processes them one at a time (`_process_one`)."""
    claimed: list[tuple[int, object]] = []
    for isolated in (False, True):
        writes = _BatchWrites(planner)
        marked: list[tuple[int, object, str]] = []
        results: list[IngestResult] = []
        try:
            with transaction(factory) as s:
                claimed = [(int(nid), data) for nid, data in
                           s.execute(_claim(size), {"cutoff": cutoff, "after": after}).all()]
                known = _lock_proformas(s, [_notice(data) for _, data in claimed])
                for nid, data in claimed:
                    try:
                        results.append(_process_in_batch(s, nid, data, actor, planner, writes, known,
                                                         marked if isolated else None))
                    except Exception as exc:
                        if isolated:
                            raise
                        raise _Redo() from exc
                writes.flush(s)
        except _Redo as redo:
            log.info("payment notification batch: one failed (%s); again with a savepoint each",
                     _reason(cast(Exception, redo.__cause__)))
            continue
        except _RETRY_LATER as exc:
            if not claimed:
                raise
            log.warning("a batch of %d payment notification(s) was not committed: %s; left "
                        "stored for the next run", len(claimed), exc)
            return [IngestResult("retry", nid) for nid, _ in claimed], [nid for nid, _ in claimed]
        except Exception:
            if not claimed:
                raise
            log.exception("a batch of %d payment notification(s) failed as a whole; processing "
                          "them one at a time", len(claimed))
            return ([_process_one(factory, planner, nid, data, actor, None, alert)
                     for nid, data in claimed], [nid for nid, _ in claimed])
        for nid, data, reason in marked:
            _alert_error(alert, nid, data, reason)
        return results, [nid for nid, _ in claimed]
    raise AssertionError("unreachable: the isolated run returns or raises")


def process_pending(
    factory: sessionmaker[Session], planner: Planner, *, limit: int = 500, older_than_s: float = 0.0,
    actor: str = "system:payments", confirm: Confirm | None = None, alert: OpsAlert | None = None,
    batch: int = BATCH,
) -> list[IngestResult]:
    """Process up to ``limit`` stored notifications, oldest first, ``batch`` per
    transaction (`_settle_batch`). Run by the worker right after webhooks arrive, and by
    the re-drive as a backstop (`older_than_s`) for any whose processing crashed. Two
    workers at once split the backlog (PostgreSQL: SKIP LOCKED); a notification is
    settled by one of them, once.

    One that fails is marked `error` (``alert`` tells ops, once) and the rest go on; a
    passing failure (`_RETRY_LATER`) leaves it `stored` (result ``retry``). A provider's
    payments that its API confirms (PayPal) are processed one at a time after the batches,
    each confirmed outside its transaction (`process`)."""
    if batch < 1:
        raise InvalidInput(f"batch must be at least 1, not {batch}")
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    results: list[IngestResult] = []
    after = 0
    while len(results) < limit:
        size = min(batch, limit - len(results))
        done, claimed = _settle_batch(factory, planner, size=size, after=after, cutoff=cutoff,
                                      actor=actor, alert=alert)
        results += done
        if len(claimed) < size:
            break
        after = claimed[-1]
    if len(results) < limit:
        with transaction(factory) as s:
            rows = list(s.execute(
                select(Notification.id, Notification.notice)
                .where(Notification.status == "stored", Notification.received_at <= cutoff,
                       Notification.provider.in_(sorted(_CONFIRMED_BY_API)))
                .order_by(Notification.id)
                .limit(limit - len(results))).all())
        for nid, data in rows:
            results.append(_process_one(factory, planner, nid, data, actor, confirm, alert))
    return results


def reprocess_stored(factory: sessionmaker[Session], planner: Planner, older_than_s: float = 60.0,
                     confirm: Confirm | None = None, alert: OpsAlert | None = None) -> int:
    """The re-drive's backstop: notifications still `stored` after `older_than_s`."""
    return len(process_pending(factory, planner, older_than_s=older_than_s, actor="system:reprocess",
                               confirm=confirm, alert=alert))


def record_manual_payment(
    factory: sessionmaker[Session],
    planner: Planner,
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
    return ingest(factory, notice, actor, planner)

"""The lifecycle clock: renewal proformas, shutdown on expiry, staged deletion.

``sweep(today)`` is run daily by the beat (``provisioner.sweep``) and by ops
(``provisioner sweep [--now DATE] [--dry-run]``). It reads only services whose
``clock_on`` (indexed) is today or earlier, so its cost grows with what is due, not
with all services. For each it works out what the domain's schedule says is due
(``domain.lifecycle.term_schedule``), does the database part in the sweep's own
transaction, writes the side effects as journal steps, and moves ``clock_on`` to the
service's next date:

* renewal: a renewal order and proforma (no discount code; priced as a renewal), due
  on the last day the renewal can be done; its ``notify.proforma`` step e-mails it.
  UNIQUE(service, term) in ``renewals`` means a term is billed once, whatever runs twice.
* reminder: ``clock.reminder`` e-mails the open renewal proforma again (once per
  reminder day; a paid proforma gets no reminder).
* shutdown (the day after expiry, proforma still unpaid): the reactivation fee of the
  brand is added to the open renewal proforma (the same reference keeps working; an
  earlier payment of the old amount counts towards it), the service becomes
  ``expired``, and ``clock.shutdown`` suspends it on its node (the "site disabled"
  page) and tells the customer. A proforma paid in the meantime stops the shutdown.
* delete_data (stage 1): the renewal proforma is cancelled (no reactivation after
  this), ``clock.delete_data`` removes the account from its node after a last backup
  and records what it removed; the service becomes ``deleted``.
* purge_backups (stage 2, only after stage 1 is done): ``clock.purge_backups`` purges
  the backups and records what it removed; the service becomes ``purged``.

A paid renewal proforma plans ``service.renew`` (pipeline/plan.py): the term is
extended from the ORIGINAL expiry, also when paid late, and a service shut down for
expiry is reactivated (unsuspended on its node).

No step ever runs before its date: each stage step checks its ``due_on`` against the
clock it runs with. Ops can put a service on hold (``hold``): its clock stops and its
pending clock steps are withdrawn until ``release``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioner.domain import billing, catalog, references
from provisioner.domain.lifecycle import (
    RUNNING_STATES,
    ClockEvent,
    Due,
    ProformaState,
    ServiceState,
    due_events,
    earliest_event,
    next_clock_on,
    renew_by,
    renewed_expiry,
    transition,
)
from provisioner.domain.money import split_gross
from provisioner.domain.policy import BrandPolicy, get_brand
from provisioner.errors import Conflict, NotFound, StepFailed
from provisioner.pipeline.capabilities.billing import send_once
from provisioner.pipeline.capabilities.dns_tls import renewal_step
from provisioner.pipeline.capabilities.placement import account_and_node, spec_of, target_of
from provisioner.pipeline.engine.plan import LinePlanner, OrderView, StepSpec, plan
from provisioner.pipeline.engine.runner import Handler, Runner, StepContext, StepResult, run_queued
from provisioner.store.audit import audit
from provisioner.store.counters import next_number
from provisioner.store.db import transaction
from provisioner.store.hosting import HostingAccount, HostingNode
from provisioner.store.lifecycle import Renewal, StageRecord
from provisioner.store.models import (
    Counter,
    Order,
    OrderItemRow,
    Proforma,
    ProformaLine,
    Service,
    Step,
)
from provisioner.store.tls import TlsCertificate, latest_certificate
from provisioner.timeutil import utcnow

log = logging.getLogger("provisioner.timeutil")
SYSTEM = "system:clock"
STAGES = ("shutdown", "delete_data", "purge_backups")


# -- the sweep ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    service_id: int
    event: str  # renewal | reminder-N | shutdown | delete_data | purge_backups | wait
    due_on: date
    detail: str = ""


@dataclass
class SweepReport:
    today: date
    dry_run: bool
    looked_at: int = 0
    actions: list[Action] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:
            key = "reminder" if a.event.startswith("reminder") else a.event
            out[key] = out.get(key, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"today": self.today.isoformat(), "dry_run": self.dry_run,
                "looked_at": self.looked_at, "counts": self.counts(),
                "actions": [{**asdict(a), "due_on": a.due_on.isoformat()} for a in self.actions]}


def step_key(service_id: int, tag: str, term: date) -> str:
    return f"service:{service_id}/clock.{tag}@{term.isoformat()}"


def sweep(factory: sessionmaker[Session], today: date, *, dry_run: bool = False,
          batch: int = 500, progress: Callable[[int], None] | None = None,
          tls_renew_days: int = 30) -> SweepReport:
    """Do what is due on ``today``; with ``dry_run`` only say what that would be."""
    report = SweepReport(today, dry_run)
    report.actions += _certificates(factory, today, dry_run, tls_renew_days)
    after_id = 0
    while True:
        with transaction(factory) as s:
            q = (select(Service, Order.brand)
                 .join(Order, Order.id == Service.order_id)
                 .where(Service.clock_on <= today, Service.held.is_(False), Service.id > after_id)
                 .order_by(Service.id)
                 .limit(batch))
            if s.get_bind().dialect.name == "postgresql":
                # two sweeps at once take disjoint services; each waits for nothing
                q = q.with_for_update(of=Service, skip_locked=True)
            rows = s.execute(q).all()
            b = _Batch(s, today, dry_run, [service for service, _ in rows])
            with s.no_autoflush:  # everything it reads was loaded above: one flush at the end
                for service, brand in rows:
                    report.actions += _advance(b, service, get_brand(brand))
            if b.new_proformas:
                s.flush()
                for proforma in b.new_proformas:
                    record_proforma_plan(s, proforma)
            report.looked_at += len(rows)
            if dry_run:
                s.rollback()
        if progress is not None:
            progress(len(rows))
        if len(rows) < batch:
            return report
        after_id = rows[-1][0].id


def _certificates(factory: sessionmaker[Session], today: date, dry_run: bool,
                  renew_days: int) -> list[Action]:
    """Certificates renew by themselves: a ``tls.issue`` step for each deployed
    certificate of a running service with ``renew_days`` or fewer left (one key per
    expiry, so a failing renewal retries, alerts ops, and is not written twice). Read
    through the ``not_after`` index, in a window: its cost grows with what is due."""

    # due during today: at most `renew_days` left at some moment of the day
    horizon = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(
        days=renew_days + 1)
    actions: list[Action] = []
    with transaction(factory) as s:
        rows = s.execute(
            select(TlsCertificate, Service)
            .join(Service, Service.id == TlsCertificate.service_id)
            .where(TlsCertificate.not_after < horizon,
                   TlsCertificate.not_after >= horizon - timedelta(days=renew_days + 30),
                   Service.state.in_([st.value for st in RUNNING_STATES]),
                   Service.held.is_(False))).all()
        for cert, service in rows:
            latest = latest_certificate(s, cert.primary_name)
            if latest is None or latest.id != cert.id:
                continue  # replaced already
            kinds = set((cert.challenges or {}).values())
            spec = renewal_step(service.id, cert.names, cert.not_after.date(),
                                "http-01" if kinds == {"http-01"} else "auto")
            if s.execute(select(Step.id).where(Step.key == spec.key)).first() is not None:
                continue
            actions.append(Action(service.id, "tls_renewal", cert.not_after.date(),
                                  f"{cert.primary_name}: {len(cert.names)} name(s)"))
            if not dry_run:
                s.add(_step_row(service.order_id, spec))
        if dry_run:
            s.rollback()
    return actions


class _Batch:
    """One batch of the sweep: what its services need, loaded in a few queries."""

    def __init__(self, s: Session, today: date, dry_run: bool, services: list[Service]) -> None:
        self.s, self.today, self.dry_run = s, today, dry_run
        ids = [sv.id for sv in services]
        self.renewals: dict[tuple[int, date], Renewal] = {}
        self.proformas: dict[int, Proforma] = {}
        self.keys: set[str] = set()
        self.items: dict[int, OrderItemRow] = {}
        self.new_proformas: list[Proforma] = []
        self._counter: Any = None
        if not ids:
            return
        for r, p in s.execute(select(Renewal, Proforma).join(Proforma, Proforma.id == Renewal.proforma_id)
                              .where(Renewal.service_id.in_(ids))).all():
            self.renewals[(r.service_id, r.term_expiry)] = r
            self.proformas[p.id] = p
        self.items = {row.id: row for row in s.execute(select(OrderItemRow).where(
            OrderItemRow.id.in_([sv.item_id for sv in services]))).scalars()}
        self.keys = set(s.execute(select(Step.key).where(Step.service_id.in_(ids),
                                                         Step.kind.like("clock.%"))).scalars())

    def renewal(self, service_id: int, term: date) -> Renewal | None:
        return self.renewals.get((service_id, term))

    def record(self, service: Service, spec: StepSpec) -> bool:
        """A clock step into the journal unless its key is there: True if it is new."""
        if spec.key in self.keys:
            return False
        self.keys.add(spec.key)
        self.s.add(_step_row(service.order_id, spec))
        return True

    def next_proforma_number(self, year: int) -> int:
        """Gapless: the counter row is read (and locked) once per batch and bumped in
        memory; it is written with the batch, in the same transaction."""

        if self._counter is None or self._counter.year != year:
            next_number(self.s, "proforma", year)  # creates and locks the row, bumps it once
            self._counter = self.s.execute(select(Counter).where(
                Counter.kind == "proforma", Counter.year == year)).scalar_one()
            return int(self._counter.last)
        self._counter.last += 1
        return int(self._counter.last)


def _step_row(order_id: int, spec: StepSpec) -> Step:
    now = utcnow()
    return Step(key=spec.key, order_id=order_id, service_id=spec.service_id, kind=spec.kind,
                params=spec.params, deps=list(spec.deps), state="pending", attempts=0,
                created_at=now, updated_at=now)


def _advance(b: _Batch, service: Service, policy: BrandPolicy) -> list[Action]:
    today = b.today
    expiry = service.expires_on
    due = due_events(service.state, expiry, service.kind, service.name, policy, today)
    actions: list[Action] = []
    wait = False
    if expiry is not None:
        reminders = [d for d in due if d.event is ClockEvent.REMINDER]
        latest_reminder = reminders[-1] if reminders else None  # stale ones are not sent late
        for d in due:
            if d.event is ClockEvent.REMINDER and d is not latest_reminder:
                continue
            action, blocked = _do(b, service, policy, d, expiry)
            if action is not None:
                actions.append(action)
            wait = wait or blocked
    nxt = next_clock_on(service.state, expiry, service.kind, service.name, policy, today)
    if wait:  # something due could not happen yet (a step still running): look again tomorrow
        nxt = today + timedelta(days=1)
    service.clock_on = nxt
    return actions


def _do(b: _Batch, service: Service, policy: BrandPolicy, d: Due,
        expiry: date) -> tuple[Action | None, bool]:
    """One due event. Returns (what was done, whether the service must be looked at again)."""
    s, today, dry_run = b.s, b.today, b.dry_run
    act = Action(service.id, d.tag, d.on)
    if d.event is ClockEvent.RENEWAL:
        if b.renewal(service.id, expiry) is not None:
            return None, False
        if not dry_run:
            ensure_renewal(s, service, policy, today, b)
        return act, False
    renewal = b.renewal(service.id, expiry)
    proforma = (b.proformas.get(renewal.proforma_id) or renewal.proforma) if renewal is not None \
        else None
    if d.event is ClockEvent.REMINDER:
        if proforma is None or proforma.state != ProformaState.OPEN.value:
            return None, False
        key = step_key(service.id, d.tag, expiry)
        if dry_run:
            return act, False
        added = b.record(service, StepSpec(key, "clock.reminder", (), {
            "service_id": service.id, "proforma_id": proforma.id, "term_expiry": expiry.isoformat(),
            "days": int(d.tag.rsplit("-", 1)[1])}, service.id))
        return (act if added else None), False
    if d.event is ClockEvent.SHUTDOWN:
        if proforma is None and not dry_run:  # no notice went out (a very short term)
            renewal = ensure_renewal(s, service, policy, today, b)
            proforma = renewal.proforma
        if proforma is not None and proforma.state == ProformaState.PAID.value:
            return Action(service.id, "wait", d.on, "renewal paid, not applied yet"), True
        if dry_run:
            return replace(act, detail="suspend; add the reactivation fee"), False
        assert renewal is not None and proforma is not None
        if not renewal.fee_added and policy.reactivation_fee > 0:
            if not add_reactivation_fee(s, proforma, policy):
                return Action(service.id, "wait", d.on, "renewal paid meanwhile"), True
            renewal.fee_added = True
        service.state = transition(service.state, ServiceState.EXPIRED).value
        service.updated_at = utcnow()
        audit(s, SYSTEM, "service.expired", "service", service.id,
              {"expired_on": expiry.isoformat(), "proforma": proforma.number})
        b.record(service, StepSpec(step_key(service.id, "shutdown", expiry), "clock.shutdown",
                                          (), _stage_params(service, d, expiry, proforma.id),
                                          service.id))
        return act, False
    if d.event is ClockEvent.DELETE_DATA:
        if proforma is not None and proforma.state == ProformaState.PAID.value:
            return Action(service.id, "wait", d.on, "reactivation paid, not applied yet"), True
        if dry_run:
            return replace(act, detail="last backup, then remove from the node"), False
        if proforma is not None and proforma.state == ProformaState.OPEN.value:
            res = s.execute(update(Proforma).where(Proforma.id == proforma.id,
                                                   Proforma.state == ProformaState.OPEN.value)
                            .values(state=ProformaState.CANCELLED.value)
                            .execution_options(synchronize_session=False))
            if res.rowcount != 1:  # type: ignore[attr-defined]  # paid this very moment
                return Action(service.id, "wait", d.on, "reactivation paid meanwhile"), True
            audit(s, SYSTEM, "proforma.cancelled", "proforma", proforma.number,
                  {"reason": "retention over: the service's data are deleted"})
        added = b.record(service, StepSpec(step_key(service.id, "delete_data", expiry),
                                                  "clock.delete_data", (),
                                                  _stage_params(service, d, expiry), service.id))
        # the service stays `expired` until the step is done; then stage 2 can follow
        return (act if added else None), False
    if d.event is ClockEvent.PURGE_BACKUPS:
        if dry_run:
            return replace(act, detail="purge the backups"), False
        added = b.record(service, StepSpec(step_key(service.id, "purge_backups", expiry),
                                                  "clock.purge_backups", (),
                                                  _stage_params(service, d, expiry), service.id))
        return (act if added else None), False
    raise AssertionError(d.event)


def _stage_params(service: Service, d: Due, expiry: date,
                  proforma_id: int | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"service_id": service.id, "term_expiry": expiry.isoformat(),
                              "due_on": d.on.isoformat()}
    if proforma_id is not None:
        params["proforma_id"] = proforma_id
    return params


def _renewal(s: Session, service_id: int, term: date) -> Renewal | None:
    return s.execute(select(Renewal).where(Renewal.service_id == service_id,
                                           Renewal.term_expiry == term)).scalar_one_or_none()


# -- renewal proformas ----------------------------------------------------------------------
def ensure_renewal(s: Session, service: Service, policy: BrandPolicy, today: date,
                   b: _Batch | None = None) -> Renewal:
    """The renewal order and proforma of the service's current term, created once."""
    assert service.expires_on is not None
    term = service.expires_on
    existing = b.renewal(service.id, term) if b is not None else _renewal(s, service.id, term)
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
    seq = b.next_proforma_number(today.year) if b is not None else next_number(s, "proforma",
                                                                                  today.year)
    order = Order(customer_id=service.customer_id, brand=policy.code, status="open",
                  discount_code=None, renewal=True, created_at=now)
    row = OrderItemRow(position=1, kind=item.kind, product=item.product, name=item.name,
                       period_months=item.period_months, action="renew", spec=item.to_spec())
    order.items.append(row)
    due = max(renew_by(term, service.kind, service.name, policy), today)
    proforma = Proforma(number=billing.proforma_number(today.year, seq),
                        reference=references.proforma_reference(seq, today.year),
                        order=order, state=ProformaState.OPEN.value, issued_on=today,
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
        s.add(_step_row(proforma.order_id, spec))


def add_reactivation_fee(s: Session, proforma: Proforma, policy: BrandPolicy) -> bool:
    """Add the brand's reactivation fee to an OPEN proforma; False if it is no longer open."""
    fee = policy.reactivation_fee
    net, vat = split_gross(fee, policy.vat_rate)
    if proforma.id is None:  # made in this very batch: nobody else can see (or pay) it yet
        proforma.net += net
        proforma.vat += vat
        proforma.gross += fee
        proforma.lines.append(ProformaLine(
            position=len(proforma.lines) + 1, item_id=None,
            description="Reactivation fee / Pristojbina za ponovni vklop", unit_gross=fee,
            discount_gross=Decimal("0.00"), net=net, vat=vat, gross=fee,
            vat_rate=policy.vat_rate, promo=False))
        audit(s, SYSTEM, "proforma.fee_added", "proforma", proforma.number,
              {"fee": str(fee), "gross": str(proforma.gross)})
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
                       description="Reactivation fee / Pristojbina za ponovni vklop",
                       unit_gross=fee, discount_gross=Decimal("0.00"), net=net, vat=vat, gross=fee,
                       vat_rate=policy.vat_rate, promo=False))
    gross = proforma.gross + fee
    s.expire(proforma, ["net", "vat", "gross"])  # the UPDATE above wrote them
    audit(s, SYSTEM, "proforma.fee_added", "proforma", proforma.number,
          {"fee": str(fee), "gross": str(gross)})
    return True


# -- hold -----------------------------------------------------------------------------------
def hold(factory: sessionmaker[Session], service_id: int, reason: str, actor: str) -> dict[str, Any]:
    """Stop the service's clock: nothing is shut down or deleted until ``release``. Clock
    steps not yet running are withdrawn (the sweep writes them again after release)."""
    reason = " ".join(str(reason).split())[:500]
    if not reason:
        raise Conflict("a hold needs a reason")
    with transaction(factory) as s:
        service = _service(s, service_id)
        service.held = True
        service.hold_reason = reason
        service.clock_on = None
        withdrawn = _withdraw_clock_steps(s, service_id, ("pending", "queued", "failed"))
        audit(s, actor, "service.held", "service", service_id,
              {"reason": reason, "withdrawn": withdrawn})
        return {"service": service_id, "held": True, "reason": reason, "withdrawn": withdrawn}


def release(factory: sessionmaker[Session], service_id: int, actor: str,
            today: date | None = None) -> dict[str, Any]:
    with transaction(factory) as s:
        service = _service(s, service_id)
        if not service.held:
            return {"service": service_id, "held": False}
        service.held = False
        service.hold_reason = None
        service.clock_on = today or utcnow().date()  # the next sweep catches up
        _withdraw_clock_steps(s, service_id, ("failed",))
        audit(s, actor, "service.released", "service", service_id)
        return {"service": service_id, "held": False}


def _withdraw_clock_steps(s: Session, service_id: int, states: tuple[str, ...]) -> int:
    res = s.execute(delete(Step).where(Step.service_id == service_id,
                                       Step.kind.in_(("clock.shutdown", "clock.delete_data",
                                                      "clock.purge_backups", "clock.reminder")),
                                       Step.state.in_(states)))
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def _service(s: Session, service_id: int) -> Service:
    service = s.get(Service, service_id)
    if service is None:
        raise NotFound(f"no service {service_id}")
    return service


def stage_records(factory: sessionmaker[Session], service_id: int) -> list[dict[str, Any]]:
    with transaction(factory) as s:
        rows = s.execute(select(StageRecord).where(StageRecord.service_id == service_id)
                         .order_by(StageRecord.id)).scalars()
        return [{"stage": r.stage, "term_expiry": r.term_expiry.isoformat(),
                 "due_on": r.due_on.isoformat(), "done_on": r.done_on.isoformat(),
                 "manifest": r.manifest} for r in rows]


# -- steps ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Stage:
    service: Service
    term: date
    due_on: date
    node: HostingNode | None
    account: HostingAccount | None


def _load_stage(ctx: StepContext, step: Step, expect: ServiceState) -> _Stage | StepResult:
    """The service of a stage step, checked: not held, not early, still in ``expect`` for
    the same term. Returns a no-op result when the stage no longer applies."""

    service_id = int(step.params["service_id"])
    term = date.fromisoformat(str(step.params["term_expiry"]))
    due_on = date.fromisoformat(str(step.params["due_on"]))
    today = ctx.now().date()
    if today < due_on:  # never before its day, whoever queued it
        raise StepFailed(step.key, f"not due before {due_on.isoformat()} (today {today})")
    with transaction(ctx.factory) as s:
        service = _service(s, service_id)
        if service.held:
            raise StepFailed(step.key, f"service {service_id} is on hold: {service.hold_reason}")
        if service.expires_on != term or service.state != expect.value:
            return StepResult(False, {"skipped": f"service is {service.state}, "
                                                 f"expires {service.expires_on}"})
        account, node = account_and_node(s, service_id)
        s.expunge(service)
        return _Stage(service, term, due_on, node, account)


def _finish_stage(ctx: StepContext, st: _Stage, stage: str, target: ServiceState | None,
                  manifest: dict[str, Any]) -> None:
    today = ctx.now().date()
    with transaction(ctx.factory) as s:
        exists = s.execute(select(StageRecord.id).where(
            StageRecord.service_id == st.service.id, StageRecord.stage == stage,
            StageRecord.term_expiry == st.term)).first()
        if exists is None:
            s.add(StageRecord(service_id=st.service.id, stage=stage, term_expiry=st.term,
                              due_on=st.due_on, done_on=today, done_at=ctx.now(), manifest=manifest))
        service = _service(s, st.service.id)
        if target is not None:
            service.state = transition(service.state, target).value
            service.clock_on = today  # the next sweep works out what follows
            service.updated_at = ctx.now()
        audit(s, SYSTEM, f"service.{stage}", "service", st.service.id, manifest)


def step_reminder(ctx: StepContext, step: Step) -> StepResult:
    proforma_id = int(step.params["proforma_id"])
    with transaction(ctx.factory) as s:
        p = s.get(Proforma, proforma_id)
        if p is None or p.state != ProformaState.OPEN.value:
            return StepResult(False, {"skipped": "the renewal proforma is no longer open"})
        service = _service(s, int(step.params["service_id"]))
        extra = {"service": {"name": service.name, "kind": service.kind,
                             "expires_on": date.fromisoformat(str(step.params["term_expiry"]))},
                 "days": int(step.params["days"])}
    return send_once(ctx, "renewal_reminder", proforma_id, extra)


def step_shutdown(ctx: StepContext, step: Step) -> StepResult:
    """Suspend an expired service on its node (the disabled page; no FTP or mail logins;
    all data kept) and tell the customer, with the proforma that reactivates it."""
    st = _load_stage(ctx, step, ServiceState.EXPIRED)
    if isinstance(st, StepResult):
        return st
    manifest: dict[str, Any] = {"kind": st.service.kind}
    if st.account is not None and st.node is not None and st.account.state != "removed":
        ctx.heartbeat()
        adapter = ctx.adapters.hosting
        result = adapter.suspend(target_of(st.node), spec_of(st.account))
        result.raise_for_status(step.key)
        manifest.update({"node": st.node.name, "account": st.account.username, "suspended": True})
        with transaction(ctx.factory) as s:
            now_state = _service(s, st.service.id).state
        if now_state != ServiceState.EXPIRED.value:  # paid while we were suspending it
            adapter.unsuspend(target_of(st.node), spec_of(st.account)).raise_for_status(step.key)
            return StepResult(True, {"skipped": "renewed during the shutdown; unsuspended"})
    else:
        manifest["note"] = "nothing runs on a node for this service"
    _finish_stage(ctx, st, "shutdown", None, manifest)
    policy = _policy(ctx, st.service)
    sent = send_once(ctx, "service_shutdown", int(step.params["proforma_id"]), {
        "service": {"name": st.service.name, "kind": st.service.kind, "expires_on": st.term},
        "deletion_on": st.term + timedelta(days=policy.data_retention_days),
        "website_url": policy.website_url,
    })
    return StepResult(True, {**manifest, "mail": sent.details})


def _policy(ctx: StepContext, service: Service) -> BrandPolicy:
    with transaction(ctx.factory) as s:
        order = s.get(Order, service.order_id)
        assert order is not None
        return get_brand(order.brand)


def step_delete_data(ctx: StepContext, step: Step) -> StepResult:
    """Stage 1: a last backup, then the account is removed from its node."""
    st = _load_stage(ctx, step, ServiceState.EXPIRED)
    if isinstance(st, StepResult):
        return st
    manifest: dict[str, Any] = {"kind": st.service.kind}
    if st.account is not None and st.node is not None and st.account.state != "removed":
        ctx.heartbeat()
        removal = ctx.adapters.backups.remove_account(target_of(st.node), spec_of(st.account),
                                                      ctx.adapters.hosting)
        manifest.update({"node": st.node.name, "account": st.account.username,
                         **removal.as_dict()})
        with transaction(ctx.factory) as s:
            row = s.get(HostingAccount, st.account.id)
            assert row is not None
            row.state = "removed"
            row.updated_at = ctx.now()
    else:
        manifest["note"] = "no data on a node for this service"
    _finish_stage(ctx, st, "delete_data", ServiceState.DELETED, manifest)
    return StepResult(True, manifest)


def step_purge_backups(ctx: StepContext, step: Step) -> StepResult:
    """Stage 2: every backup of the account is purged; what was removed is recorded."""
    st = _load_stage(ctx, step, ServiceState.DELETED)
    if isinstance(st, StepResult):
        return st
    manifest: dict[str, Any] = {"kind": st.service.kind}
    if st.account is not None and st.node is not None:
        ctx.heartbeat()
        purged = ctx.adapters.backups.purge(target_of(st.node), st.account.username)
        manifest.update({"node": st.node.name, "account": st.account.username, **purged.as_dict()})
    else:
        manifest["note"] = "no backups on a node for this service"
    _finish_stage(ctx, st, "purge_backups", ServiceState.PURGED, manifest)
    with transaction(ctx.factory) as s:
        _service(s, st.service.id).clock_on = None
    return StepResult(True, manifest)


def step_service_renew(ctx: StepContext, step: Step) -> StepResult:
    """A paid renewal: the term runs on from the ORIGINAL expiry (RULES 001 §2.4), also
    when paid late; a service shut down for expiry is switched on again."""
    service_id = int(step.params["service_id"])
    term = date.fromisoformat(str(step.params["term_expiry"]))
    months = int(step.params["months"])
    today = ctx.now().date()
    with transaction(ctx.factory) as s:
        service = _service(s, service_id)
        if service.state in (ServiceState.DELETED.value, ServiceState.PURGED.value):
            raise StepFailed(step.key, f"service {service_id} is {service.state}: its data are "
                                       "gone; refund the renewal or provision anew")
        was = service.state
        target = renewed_expiry(term, months)
        # a domain's renew step has set the registry's expiry already: keep the later one
        new_expiry = max(target, service.expires_on or target)
        changed = service.expires_on != new_expiry or was == ServiceState.EXPIRED.value
        service.expires_on = new_expiry
        if was == ServiceState.EXPIRED.value:
            service.state = transition(was, ServiceState.ACTIVE).value
        policy = get_brand(s.get(Order, service.order_id).brand)  # type: ignore[union-attr]
        service.clock_on = next_clock_on(service.state, new_expiry, service.kind, service.name,
                                         policy, today) or earliest_event(new_expiry)
        service.updated_at = ctx.now()
        account, node = account_and_node(s, service_id)
        if changed:
            audit(s, SYSTEM, "service.renewed", "service", service_id,
                  {"from": term.isoformat(), "to": new_expiry.isoformat(), "was": was})
    if was == ServiceState.EXPIRED.value and account is not None and node is not None \
            and account.state != "removed":
        ctx.heartbeat()
        ctx.adapters.hosting.unsuspend(target_of(node), spec_of(account)).raise_for_status(step.key)
    return StepResult(changed, {"expires_on": new_expiry.isoformat(), "was": was})


# -- the whole loop, for ops and tests: sweep, then run what it queued ---------------------
def run_day(factory: sessionmaker[Session], runner: Runner, today: date, *,
            max_rounds: int = 50) -> SweepReport:
    """Sweep ``today`` and run every step that became ready, in this process (what the
    workers do in production). ``runner`` is a ``Runner`` whose clock says ``today``."""
    total = SweepReport(today, False)
    for _ in range(5):  # a stage finished today may make the next one due today (iSERVER)
        report = sweep(factory, today)
        total.looked_at += report.looked_at
        total.actions += report.actions
        run_queued(runner, max_rounds=max_rounds)
        if not report.actions:
            break
    return total


HANDLERS: dict[str, Handler] = {
    "clock.reminder": step_reminder,
    "clock.shutdown": step_shutdown,
    "clock.delete_data": step_delete_data,
    "clock.purge_backups": step_purge_backups,
    "service.renew": step_service_renew,
}

PLANNERS: dict[str, LinePlanner] = {}  # no line kind of its own
